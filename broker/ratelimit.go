package broker

import (
	"context"
	"log/slog"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Rate is a token bucket: PerSecond tokens a second, at most Burst.
type Rate struct {
	PerSecond float64
	Burst     float64
}

// ParseRate reads "100:500" (per second : burst).
func ParseRate(s string) (Rate, bool) {
	var r Rate
	a, b, ok := cut(s, ':')
	if !ok {
		return r, false
	}
	var err1, err2 error
	r.PerSecond, err1 = strconv.ParseFloat(a, 64)
	r.Burst, err2 = strconv.ParseFloat(b, 64)
	return r, err1 == nil && err2 == nil && r.PerSecond > 0 && r.Burst >= 1
}

func cut(s string, sep byte) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == sep {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// Limiter is a token-bucket rate limiter kept in Redis, so that every
// brokerd process shares the same buckets. It fails open: when Redis does not
// answer, requests pass (the stores will refuse them anyway).
type Limiter struct {
	rdb             redis.UniversalClient
	Account, Anonym Rate
	Now             func() time.Time
	Log             *slog.Logger
}

// NewLimiter returns a limiter with per-account and per-IP rates.
func NewLimiter(rdb redis.UniversalClient, account, anonymous Rate) *Limiter {
	return &Limiter{rdb: rdb, Account: account, Anonym: anonymous, Now: time.Now, Log: slog.Default()}
}

// KEYS: bucket. ARGV: rate/s, burst, now µs. Returns {allowed, retry µs}.
var bucketScript = redis.NewScript(`
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if not tokens then tokens, ts = burst, now end
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1e6) end
local ok, retry = 0, 0
if tokens >= 1 then tokens = tokens - 1; ok = 1 else retry = math.ceil((1 - tokens) * 1e6 / rate) end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {ok, retry}
`)

// Allow takes one token from the bucket of key and says whether the request
// may pass, and if not, when to retry.
func (l *Limiter) Allow(ctx context.Context, key string, anonymous bool) (bool, time.Duration) {
	r := l.Account
	if anonymous {
		r = l.Anonym
	}
	res, err := bucketScript.Run(ctx, l.rdb, []string{"rl:{" + key + "}"}, r.PerSecond, r.Burst, l.Now().UnixMicro()).Int64Slice()
	if err != nil || len(res) != 2 {
		l.Log.Warn("rate limiter unavailable; letting the request pass", "err", err)
		return true, 0
	}
	return res[0] == 1, time.Duration(res[1]) * time.Microsecond
}
