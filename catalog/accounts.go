package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"computebroker/market"
)

// Accounts:
//
//	account:<id>        hash: "json" (market.Account without status), "status", "revoked", "token" (hash of the current token)
//	token:<hash>        string: account id
//	accounts:<role>     set: account ids of a role

func accountKey(id string) string        { return "account:" + id }
func tokenKey(hash string) string        { return "token:" + hash }
func roleKey(r market.Role) string       { return "accounts:" + string(r) }
func providerOffersKey(id string) string { return "provider:" + id + ":offers" }

// CreateAccount stores a new account reachable by the token whose hash is
// tokenHash. It fails with conflict when the id exists.
func (s *Store) CreateAccount(ctx context.Context, a market.Account, tokenHash string) error {
	body, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("catalog: encode account: %w", err)
	}
	ok, err := s.rdb.HSetNX(ctx, accountKey(a.ID), "json", body).Result()
	if err != nil {
		return unavailable("create account", err)
	}
	if !ok {
		return market.Errorf(market.CodeConflict, "account %s exists", a.ID)
	}
	// The account, its token and its role index live in different slots,
	// so this is no transaction (Redis Cluster refuses one). Each partial
	// outcome is safe: a token authenticates only once the account names it.
	pipe := s.rdb.Pipeline()
	pipe.HSet(ctx, accountKey(a.ID), "status", string(a.Status), "token", tokenHash)
	pipe.Set(ctx, tokenKey(tokenHash), a.ID, 0)
	pipe.SAdd(ctx, roleKey(a.Role), a.ID)
	if _, err := pipe.Exec(ctx); err != nil {
		return unavailable("create account", err)
	}
	return nil
}

// Account returns the account with id, or not_found.
func (s *Store) Account(ctx context.Context, id string) (market.Account, error) {
	vals, err := s.rdb.HGetAll(ctx, accountKey(id)).Result()
	if err != nil {
		return market.Account{}, unavailable("get account", err)
	}
	return decodeAccount(id, vals)
}

func decodeAccount(id string, vals map[string]string) (market.Account, error) {
	if vals["json"] == "" {
		return market.Account{}, market.Errorf(market.CodeNotFound, "account %s not found", id)
	}
	var a market.Account
	if err := json.Unmarshal([]byte(vals["json"]), &a); err != nil {
		return market.Account{}, fmt.Errorf("catalog: decode account %s: %w", id, err)
	}
	a.Status = market.ProviderStatus(vals["status"])
	a.Revoked = vals["revoked"] == "1"
	return a, nil
}

// AccountByToken returns the live account whose current token hashes to
// tokenHash, or unauthenticated.
func (s *Store) AccountByToken(ctx context.Context, tokenHash string) (market.Account, error) {
	// The token → account step is cached: a token names one account for
	// good. Whether it still works (rotation, revocation) and the account's
	// standing come from the account itself, read every time.
	var id string
	if v, ok := s.tokens.Load(tokenHash); ok {
		id = v.(string)
	} else {
		var err error
		id, err = s.rdb.Get(ctx, tokenKey(tokenHash)).Result()
		if errors.Is(err, redis.Nil) {
			return market.Account{}, market.Errorf(market.CodeUnauthenticated, "invalid token")
		}
		if err != nil {
			return market.Account{}, unavailable("get token", err)
		}
	}
	vals, err := s.rdb.HGetAll(ctx, accountKey(id)).Result()
	if err != nil {
		return market.Account{}, unavailable("get account", err)
	}
	a, err := decodeAccount(id, vals)
	if err != nil || a.Revoked || vals["token"] != tokenHash {
		s.tokens.Delete(tokenHash)
		return market.Account{}, market.Errorf(market.CodeUnauthenticated, "invalid token")
	}
	if _, known := s.tokens.LoadOrStore(tokenHash, id); !known && s.tokenCount.Add(1) > maxCachedTokens {
		s.tokens.Clear() // bounded: start again
		s.tokenCount.Store(0)
	}
	return a, nil
}

// maxCachedTokens bounds the token → account cache of one process.
const maxCachedTokens = 100_000

var rotateScript = redis.NewScript(`
local old = redis.call('HGET', KEYS[1], 'token')
if not redis.call('HGET', KEYS[1], 'json') then return {err='not_found'} end
if redis.call('HGET', KEYS[1], 'revoked') == '1' then return {err='revoked'} end
redis.call('HSET', KEYS[1], 'token', ARGV[1])
return old or ''
`)

// RotateToken makes newHash the account's only valid token.
func (s *Store) RotateToken(ctx context.Context, id, newHash string) error {
	old, err := rotateScript.Run(ctx, s.rdb, []string{accountKey(id)}, newHash).Text()
	if err != nil {
		switch scriptError(err) {
		case "not_found":
			return market.Errorf(market.CodeNotFound, "account %s not found", id)
		case "revoked":
			return market.Errorf(market.CodeConflict, "account %s is revoked", id)
		}
		return unavailable("rotate token", err)
	}
	pipe := s.rdb.Pipeline()
	pipe.Set(ctx, tokenKey(newHash), id, 0)
	if old != "" {
		pipe.Del(ctx, tokenKey(old))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return unavailable("rotate token", err)
	}
	return nil
}

// Revoke stops every token of the account.
func (s *Store) Revoke(ctx context.Context, id string, now time.Time) error {
	a, err := s.Account(ctx, id)
	if err != nil {
		return err
	}
	tok, _ := s.rdb.HGet(ctx, accountKey(id), "token").Result()
	pipe := s.rdb.Pipeline()
	pipe.HSet(ctx, accountKey(id), "revoked", "1")
	if tok != "" {
		pipe.Del(ctx, tokenKey(tok))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return unavailable("revoke", err)
	}
	if a.Role == market.RoleProvider {
		return s.syncProviderOffers(ctx, id, false, now)
	}
	return nil
}

// Accounts lists the accounts of a role.
func (s *Store) Accounts(ctx context.Context, role market.Role) ([]market.Account, error) {
	ids, err := s.rdb.SMembers(ctx, roleKey(role)).Result()
	if err != nil {
		return nil, unavailable("list accounts", err)
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HGetAll(ctx, accountKey(id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, unavailable("list accounts", err)
	}
	out := make([]market.Account, 0, len(ids))
	for i, id := range ids {
		a, err := decodeAccount(id, cmds[i].Val())
		if err != nil {
			continue
		}
		out = append(out, a)
	}
	return out, nil
}

// SetProviderStatus approves or suspends a provider and applies the change
// to each of its offers in their market slots (listed again, or pulled from
// the index and change stream at once).
func (s *Store) SetProviderStatus(ctx context.Context, id string, status market.ProviderStatus, now time.Time) (market.Account, error) {
	a, err := s.Account(ctx, id)
	if err != nil {
		return a, err
	}
	if a.Role != market.RoleProvider {
		return a, market.Invalid("account %s is not a provider", id)
	}
	if err := s.rdb.HSet(ctx, accountKey(id), "status", string(status)).Err(); err != nil {
		return a, unavailable("set provider status", err)
	}
	a.Status = status
	if err := s.syncProviderOffers(ctx, id, a.Approved(), now); err != nil {
		return a, err
	}
	return a, nil
}
