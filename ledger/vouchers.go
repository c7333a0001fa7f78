package ledger

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/shopspring/decimal"

	"computebroker/market"
)

// CreateProgram stores a new programme with its whole budget left.
func (s *Store) CreateProgram(ctx context.Context, p market.Program) error {
	body, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("ledger: encode program: %w", err)
	}
	ok, err := s.rdb.SetNX(ctx, programKey(p.ID), body, 0).Result()
	if err != nil {
		return unavailable("create program", err)
	}
	if !ok {
		return market.Errorf(market.CodeConflict, "program %s exists", p.ID)
	}
	pipe := s.rdb.Pipeline()
	pipe.HSet(ctx, budgetKey(p.ID), "budget", fen(p.Budget), "spent", 0, "held", 0)
	pipe.SAdd(ctx, programsKey, p.ID)
	if _, err := pipe.Exec(ctx); err != nil {
		return unavailable("create program", err)
	}
	return nil
}

// Program returns a programme, or not_found.
func (s *Store) Program(ctx context.Context, id string) (market.Program, error) {
	body, err := s.rdb.Get(ctx, programKey(id)).Bytes()
	if isNil(err) {
		return market.Program{}, market.Errorf(market.CodeNotFound, "program %s not found", id)
	}
	if err != nil {
		return market.Program{}, unavailable("get program", err)
	}
	var p market.Program
	if err := json.Unmarshal(body, &p); err != nil {
		return market.Program{}, fmt.Errorf("ledger: decode program %s: %w", id, err)
	}
	return p, nil
}

// Budget is a programme's budget use.
type Budget struct {
	Budget, Spent, Held decimal.Decimal
}

// Left is what the programme can still pay.
func (b Budget) Left() decimal.Decimal { return b.Budget.Sub(b.Spent).Sub(b.Held) }

// ProgramBudget returns a programme's budget use.
func (s *Store) ProgramBudget(ctx context.Context, id string) (Budget, error) {
	v, err := s.rdb.HMGet(ctx, budgetKey(id), "budget", "spent", "held").Result()
	if err != nil {
		return Budget{}, unavailable("get budget", err)
	}
	return Budget{Budget: fromFen(toInt(v[0])), Spent: fromFen(toInt(v[1])), Held: fromFen(toInt(v[2]))}, nil
}

func toInt(v any) int64 {
	s, _ := v.(string)
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

// IssueVoucher grants a voucher to an SME.
func (s *Store) IssueVoucher(ctx context.Context, v market.Voucher) error {
	def := v
	def.Balance = decimal.Zero
	body, err := json.Marshal(def)
	if err != nil {
		return fmt.Errorf("ledger: encode voucher: %w", err)
	}
	key := voucherKey(v.HolderID, v.ID)
	ok, err := s.rdb.HSetNX(ctx, key, "json", body).Result()
	if err != nil {
		return unavailable("issue voucher", err)
	}
	if !ok {
		return market.Errorf(market.CodeConflict, "voucher %s exists", v.ID)
	}
	pipe := s.rdb.TxPipeline()
	pipe.HSet(ctx, key, "balance", fen(v.Amount), "held", 0, "expires_ms", v.ExpiresAt.UnixMilli(), "program", v.ProgramID)
	pipe.SAdd(ctx, vouchersKey(v.HolderID), v.ID)
	if _, err := pipe.Exec(ctx); err != nil {
		return unavailable("issue voucher", err)
	}
	if err := s.rdb.SAdd(ctx, allVouchersKey, v.HolderID+"|"+v.ID).Err(); err != nil {
		return unavailable("issue voucher", err)
	}
	return nil
}

// VoucherState is a voucher with the amount held by checkouts in flight.
type VoucherState struct {
	market.Voucher
	Held decimal.Decimal
}

// Vouchers lists an SME's vouchers, earliest expiry first, in one round
// trip.
func (s *Store) Vouchers(ctx context.Context, smeID string) ([]VoucherState, error) {
	vs, _, err := s.smeVouchers(ctx, smeID, 0)
	return vs, err
}

// smeVouchersScript reads, in the SME's slot, the SME's vouchers (KEYS[1]
// is its voucher set, ARGV[1] the prefix of a voucher's key) and, when
// ARGV[2] is not empty, its annual cap use in the programme of each of
// them (the cap key is ARGV[2] .. programme .. ARGV[3]). It returns the
// vouchers' json, balance, held and programme fields, four to a voucher,
// then the caps' programme, used and held, three to a programme. Every
// key it reads is in the slot of KEYS[1].
var smeVouchersScript = redis.NewScript(`
local vs, caps, seen = {}, {}, {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('HMGET', ARGV[1] .. id, 'json', 'balance', 'held', 'program')
  for i = 1, 4 do vs[#vs + 1] = v[i] end
  local p = v[4]
  if ARGV[2] ~= '' and p and not seen[p] then
    seen[p] = true
    local c = redis.call('HMGET', ARGV[2] .. p .. ARGV[3], 'used', 'held')
    caps[#caps + 1] = p
    caps[#caps + 1] = c[1]
    caps[#caps + 1] = c[2]
  end
end
return {vs, caps}
`)

// smeVouchers returns an SME's vouchers, earliest expiry first, and with
// year > 0 the SME's cap use (used + held, in fen) in year in the
// programme of each voucher that names it in its hash: one round trip.
func (s *Store) smeVouchers(ctx context.Context, smeID string, year int) ([]VoucherState, map[string]int64, error) {
	capPrefix, capSuffix := "", ""
	if year > 0 {
		capPrefix, capSuffix = smeTag(smeID)+":cap:", ":"+strconv.Itoa(year)
	}
	res, err := smeVouchersScript.Run(ctx, s.rdb, []string{vouchersKey(smeID)}, smeTag(smeID)+":voucher:", capPrefix, capSuffix).Slice()
	if err != nil {
		return nil, nil, unavailable("load vouchers", err)
	}
	if len(res) != 2 {
		return nil, nil, unavailable("load vouchers", fmt.Errorf("script returned %d parts", len(res)))
	}
	fields, _ := res[0].([]any)
	capFields, _ := res[1].([]any)
	str := func(v any) string { s, _ := v.(string); return s }
	out := make([]VoucherState, 0, len(fields)/4)
	for i := 0; i+3 < len(fields); i += 4 {
		if v, ok := s.voucherState(str(fields[i]), str(fields[i+1]), str(fields[i+2])); ok {
			out = append(out, v)
		}
	}
	sortVouchers(out)
	caps := make(map[string]int64, len(capFields)/3)
	for i := 0; i+2 < len(capFields); i += 3 {
		caps[str(capFields[i])] = toInt(capFields[i+1]) + toInt(capFields[i+2])
	}
	return out, caps, nil
}

// AllVouchers lists every voucher, earliest expiry first.
func (s *Store) AllVouchers(ctx context.Context) ([]VoucherState, error) {
	members, err := s.rdb.SMembers(ctx, allVouchersKey).Result()
	if err != nil {
		return nil, unavailable("list vouchers", err)
	}
	refs := make([][2]string, 0, len(members))
	for _, m := range members {
		sme, id, _ := strings.Cut(m, "|")
		refs = append(refs, [2]string{sme, id})
	}
	return s.loadVouchers(ctx, refs)
}

func (s *Store) loadVouchers(ctx context.Context, refs [][2]string) ([]VoucherState, error) {
	if len(refs) == 0 {
		return nil, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(refs))
	for i, r := range refs {
		cmds[i] = pipe.HGetAll(ctx, voucherKey(r[0], r[1]))
	}
	if _, err := pipe.Exec(ctx); err != nil && !isNil(err) {
		return nil, unavailable("load vouchers", err)
	}
	out := make([]VoucherState, 0, len(refs))
	for _, c := range cmds {
		vals := c.Val()
		if v, ok := s.voucherState(vals["json"], vals["balance"], vals["held"]); ok {
			out = append(out, v)
		}
	}
	sortVouchers(out)
	return out, nil
}

// voucherState builds a voucher from its hash's json, balance and held
// fields; ok is false when the json is not a voucher.
func (s *Store) voucherState(def, balance, held string) (VoucherState, bool) {
	v, ok := s.defs.voucher(def)
	if !ok {
		return VoucherState{}, false
	}
	bal, _ := strconv.ParseInt(balance, 10, 64)
	h, _ := strconv.ParseInt(held, 10, 64)
	v.Balance = fromFen(bal)
	return VoucherState{Voucher: v, Held: fromFen(h)}, true
}

// sortVouchers orders vouchers by expiry, then id.
func sortVouchers(out []VoucherState) {
	sort.Slice(out, func(i, j int) bool {
		if !out[i].ExpiresAt.Equal(out[j].ExpiresAt) {
			return out[i].ExpiresAt.Before(out[j].ExpiresAt)
		}
		return out[i].ID < out[j].ID
	})
}

// Funds is one voucher of an SME with everything needed to price it: the
// voucher's balance left after holds, the SME's annual cap left in its
// programme, and the programme's budget left.
type Funds struct {
	Voucher    market.Voucher
	Program    market.Program
	Available  decimal.Decimal
	CapLeft    decimal.Decimal
	BudgetLeft decimal.Decimal
}

// Funds returns the SME's unexpired vouchers with balance left and the state
// of their programmes, in two round trips: the SME's vouchers and caps (one
// slot), then the programmes and their budgets.
func (s *Store) Funds(ctx context.Context, smeID string, now time.Time) ([]Funds, error) {
	year := CapYear(now)
	vs, capUse, err := s.smeVouchers(ctx, smeID, year)
	if err != nil {
		return nil, err
	}
	live := vs[:0]
	for _, v := range vs {
		if v.ExpiresAt.After(now) && v.Balance.Sub(v.Held).IsPositive() {
			live = append(live, v)
		}
	}
	if len(live) == 0 {
		return nil, nil
	}
	pipe := s.rdb.Pipeline()
	progs := map[string]*redis.StringCmd{}
	caps := map[string]*redis.SliceCmd{} // for vouchers whose hash names no programme
	budgets := map[string]*redis.SliceCmd{}
	for _, v := range live {
		if _, ok := progs[v.ProgramID]; ok {
			continue
		}
		progs[v.ProgramID] = pipe.Get(ctx, programKey(v.ProgramID))
		if _, ok := capUse[v.ProgramID]; !ok {
			caps[v.ProgramID] = pipe.HMGet(ctx, capKey(smeID, v.ProgramID, year), "used", "held")
		}
		budgets[v.ProgramID] = pipe.HMGet(ctx, budgetKey(v.ProgramID), "budget", "spent", "held")
	}
	if _, err := pipe.Exec(ctx); err != nil && !isNil(err) {
		return nil, unavailable("load funds", err)
	}
	out := make([]Funds, 0, len(live))
	for _, v := range live {
		p, ok := s.defs.program(progs[v.ProgramID].Val())
		if !ok {
			continue
		}
		used, ok := capUse[v.ProgramID]
		if !ok {
			c := caps[v.ProgramID].Val()
			used = toInt(c[0]) + toInt(c[1])
		}
		b := budgets[v.ProgramID].Val()
		capLeft := p.AnnualCapPerCompany.Sub(fromFen(used))
		budgetLeft := fromFen(toInt(b[0]) - toInt(b[1]) - toInt(b[2]))
		out = append(out, Funds{Voucher: v.Voucher, Program: p, Available: v.Balance.Sub(v.Held), CapLeft: capLeft, BudgetLeft: budgetLeft})
	}
	return out, nil
}

// CapUsed returns what an SME has captured and holds against a programme's
// annual cap in year.
func (s *Store) CapUsed(ctx context.Context, smeID, programID string, year int) (used, held decimal.Decimal, err error) {
	v, err := s.rdb.HMGet(ctx, capKey(smeID, programID, year), "used", "held").Result()
	if err != nil {
		return decimal.Zero, decimal.Zero, unavailable("get cap", err)
	}
	return fromFen(toInt(v[0])), fromFen(toInt(v[1])), nil
}

// Programs returns every programme, ordered by id.
func (s *Store) Programs(ctx context.Context) ([]market.Program, error) {
	ids, err := s.rdb.SMembers(ctx, programsKey).Result()
	if err != nil {
		return nil, unavailable("list programs", err)
	}
	sort.Strings(ids)
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.Get(ctx, programKey(id))
	}
	if len(ids) > 0 {
		if _, err := pipe.Exec(ctx); err != nil && !isNil(err) {
			return nil, unavailable("list programs", err)
		}
	}
	out := make([]market.Program, 0, len(ids))
	for i, c := range cmds {
		body, err := c.Bytes()
		if isNil(err) {
			continue
		}
		if err != nil {
			return nil, unavailable("list programs", err)
		}
		var p market.Program
		if err := json.Unmarshal(body, &p); err != nil {
			return nil, fmt.Errorf("ledger: decode program %s: %w", ids[i], err)
		}
		out = append(out, p)
	}
	return out, nil
}
