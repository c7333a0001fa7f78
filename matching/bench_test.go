package matching

import (
	"context"
	"fmt"
	"math"
	"math/rand"
	"runtime"
	"testing"
	"time"

	"computebroker/market"
	"computebroker/voucher"

	"github.com/shopspring/decimal"
)

// Benchmark market: 8 classes × 10 regions = 80 markets, 100k offers, prices
// per shared/market-reference.md (low, typical, high), 300 providers.

type classRef struct {
	class          market.ResourceClass
	low, typ, high float64 // CNY per unit-hour, only to draw prices
	weight         int     // share of offers and jobs
	units          []int64
	jobUnits       []int64
	decimals       int32
}

var benchClasses = []classRef{
	{market.ResourceClass{ID: "gpu.h100-80g", Unit: market.UnitGPUHour}, 14, 21, 36, 20, []int64{8, 8, 16, 32, 64, 256}, []int64{1, 2, 4, 8, 8, 16, 32, 64}, 2},
	{market.ResourceClass{ID: "gpu.a800-80g", Unit: market.UnitGPUHour}, 6, 10, 21, 15, []int64{8, 8, 16, 32, 64}, []int64{1, 2, 4, 8, 16, 32}, 2},
	{market.ResourceClass{ID: "gpu.h20-96g", Unit: market.UnitGPUHour}, 10, 16, 26, 12, []int64{8, 16, 32, 64}, []int64{1, 4, 8, 16, 32}, 2},
	{market.ResourceClass{ID: "gpu.910b-64g", Unit: market.UnitGPUHour, Domestic: true}, 8, 13, 20, 15, []int64{8, 16, 32, 64, 128}, []int64{1, 8, 8, 16, 32, 64}, 2},
	{market.ResourceClass{ID: "gpu.l40s-48g", Unit: market.UnitGPUHour}, 3.5, 10.5, 18, 10, []int64{4, 8, 16}, []int64{1, 2, 4, 8}, 2},
	{market.ResourceClass{ID: "gpu.rtx4090-24g", Unit: market.UnitGPUHour}, 2, 2.5, 5, 10, []int64{1, 2, 4, 8}, []int64{1, 1, 2, 4}, 2},
	{market.ResourceClass{ID: "cpu.standard", Unit: market.UnitVCPUHour}, 0.15, 0.24, 0.40, 10, []int64{64, 128, 512, 2048}, []int64{4, 16, 64, 256}, 4},
	{market.ResourceClass{ID: "cpu.highmem", Unit: market.UnitVCPUHour}, 0.20, 0.35, 0.60, 8, []int64{64, 128, 512}, []int64{8, 32, 128}, 4},
}

var benchRegions = []string{"cn-north", "cn-east", "cn-south", "cn-west", "cn-central", "cn-northeast", "cn-northwest", "cn-southwest", "cn-east2", "cn-south2"}

type benchWorld struct {
	engine    *Engine
	markets   []market.MarketKey
	refs      map[market.MarketKey]decimal.Decimal // each market's reference price
	providers []market.Account
	jobs      []Request
	limits    []int
	offers    int
}

func weighted(rng *rand.Rand) classRef {
	total := 0
	for _, c := range benchClasses {
		total += c.weight
	}
	n := rng.Intn(total)
	for _, c := range benchClasses {
		if n < c.weight {
			return c
		}
		n -= c.weight
	}
	return benchClasses[0]
}

// drawPrice is triangular on [low, high] with its mode at typical, on a
// whole number of 10^-decimals.
func drawPrice(rng *rand.Rand, c classRef) decimal.Decimal {
	u := rng.Float64()
	a, m, b := c.low, c.typ, c.high
	var x float64
	if u < (m-a)/(b-a) {
		x = a + math.Sqrt(u*(b-a)*(m-a))
	} else {
		x = b - math.Sqrt((1-u)*(b-a)*(b-m))
	}
	scale := math.Pow10(int(c.decimals))
	return decimal.New(int64(math.Round(x*scale)), -c.decimals)
}

func newBenchWorld(b testing.TB, nOffers, nJobs int) *benchWorld {
	rng := rand.New(rand.NewSource(2026))
	w := &benchWorld{}
	for _, c := range benchClasses {
		for _, r := range benchRegions {
			w.markets = append(w.markets, market.MarketKey{Class: c.class.ID, Region: r})
		}
	}
	for i := 0; i < 300; i++ {
		p := market.Account{ID: fmt.Sprintf("prov%03d", i), Role: market.RoleProvider, Status: market.ProviderApproved,
			RelatedPartyKeys: []string{fmt.Sprintf("tax:p%d", i)}}
		switch rng.Intn(40) {
		case 0:
			p.Status = market.ProviderSuspended
		case 1:
			p.Status = market.ProviderPending
		}
		if rng.Intn(10) < 6 {
			p.Certifications = []string{"mlps-3"}
		}
		w.providers = append(w.providers, p)
	}
	ctx := context.Background()
	w.engine = NewEngine(Config{Markets: w.markets, QueueSize: 4096})
	at := time.Date(2026, 5, 1, 8, 0, 0, 0, time.UTC)
	for i := 0; i < nOffers; i++ {
		c := weighted(rng)
		// Big providers list more: a Zipf-like draw.
		p := w.providers[int(float64(len(w.providers))*math.Pow(rng.Float64(), 2))]
		units := c.units[rng.Intn(len(c.units))]
		price := drawPrice(rng, c)
		o := market.Offer{
			ID: fmt.Sprintf("off%06d", i), ProviderID: p.ID, ResourceClass: c.class.ID,
			Region: benchRegions[int(float64(len(benchRegions))*math.Pow(rng.Float64(), 1.5))],
			Units:  units, UnitsFree: units - rng.Int63n(units/2+1), Price: price, ListPrice: price,
			MaxHours: []int64{168, 720, 720, 720, 8760}[rng.Intn(5)], Status: market.OfferActive, Version: 1,
			PriceAt: at.Add(time.Duration(rng.Intn(3600)) * time.Second),
		}
		if rng.Intn(10) == 0 {
			o.Price = o.Price.Mul(decimal.RequireFromString("1.3")).Round(c.decimals) // raised after listing
		}
		if err := w.engine.Apply(ctx, Upsert(o, p)); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.engine.Sync(ctx); err != nil {
		b.Fatal(err)
	}
	w.offers = nOffers
	// Reference prices as brokerd keeps them (a 30-day VWAP per market,
	// near the class's typical price) in the engine's books, drawn apart
	// so that the offers and jobs stay those of earlier sessions.
	refRng := rand.New(rand.NewSource(7))
	w.refs = map[market.MarketKey]decimal.Decimal{}
	for _, c := range benchClasses {
		for _, r := range benchRegions {
			m := market.MarketKey{Class: c.class.ID, Region: r}
			w.refs[m] = decimal.NewFromFloat(c.typ * (0.9 + 0.2*refRng.Float64())).Round(4)
			if err := w.engine.Apply(ctx, SetReference(m, w.refs[m])); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := w.engine.Sync(ctx); err != nil {
		b.Fatal(err)
	}
	now := at.Add(2 * time.Hour)
	d := decimal.RequireFromString
	for i := 0; i < nJobs; i++ {
		c := weighted(rng)
		req := Request{
			Job: market.Job{ResourceClass: c.class.ID, Units: c.jobUnits[rng.Intn(len(c.jobUnits))],
				Hours: []int64{1, 4, 8, 24, 72, 168, 720}[rng.Intn(7)], TimeInForce: market.IOC, UseVouchers: rng.Intn(10) < 7},
			SME:   market.Account{ID: fmt.Sprintf("sme%d", i), Role: market.RoleSME, Startup: rng.Intn(5) == 0, RelatedPartyKeys: []string{fmt.Sprintf("tax:s%d", i)}},
			Class: c.class, Now: now, Rules: voucher.DefaultRules(),
		}
		switch r := rng.Intn(10); {
		case r < 5:
			req.Job.Regions = []string{benchRegions[rng.Intn(len(benchRegions))]}
		case r < 8:
			req.Job.Regions = []string{benchRegions[rng.Intn(4)], benchRegions[4+rng.Intn(6)]}
		}
		if rng.Intn(10) < 3 {
			req.Job.MaxPrice = decimal.NewFromFloat(c.typ * (0.8 + 0.4*rng.Float64())).Round(2)
		}
		if rng.Intn(5) == 0 {
			req.Job.Certifications = []string{"mlps-3"}
		}
		if rng.Intn(10) == 0 {
			req.SME.RelatedPartyKeys = append(req.SME.RelatedPartyKeys, fmt.Sprintf("tax:p%d", rng.Intn(40)))
		}
		for g, n := 0, rng.Intn(4); g < n; g++ {
			p := market.Program{ID: fmt.Sprintf("prog%d", g), Rate: d([]string{"0.20", "0.30", "0.50"}[rng.Intn(3)]),
				AnnualCapPerCompany: d("2000000"), Budget: d("100000000"), ValidFrom: now.AddDate(0, -3, 0), ValidTo: now.AddDate(0, 9, 0)}
			if c.class.Domestic {
				p.DomesticRate = d("0.30")
			}
			if rng.Intn(2) == 0 {
				p.PerOrderCap = d("5000")
			}
			if rng.Intn(5) == 0 {
				p.Providers = []string{w.providers[rng.Intn(60)].ID, w.providers[rng.Intn(60)].ID}
			}
			if rng.Intn(5) == 0 {
				p.Regions = []string{benchRegions[rng.Intn(len(benchRegions))]}
			}
			req.Grants = append(req.Grants, voucher.Grant{
				Voucher: market.Voucher{ID: fmt.Sprintf("v%d-%d", i, g), ProgramID: p.ID, HolderID: req.SME.ID, ExpiresAt: now.AddDate(0, 1+rng.Intn(6), 0)},
				Program: p, Available: decimal.New(int64(rng.Intn(5_000_000)), -2), CapLeft: d("1500000"), BudgetLeft: d("80000000"),
			})
		}
		req.Compile() // as the broker builds requests
		w.jobs = append(w.jobs, req)
		w.limits = append(w.limits, []int{1, 1, 1, 1, 1, 1, 1, 5, 5, 5}[rng.Intn(10)])
	}
	return w
}

// rankRequest is job k as Rank must see it: with the reference prices
// that the engine's books hold, which Rank, given candidates, cannot read.
func (w *benchWorld) rankRequest(k int) Request {
	r := w.jobs[k]
	r.Reference = func(m market.MarketKey) decimal.Decimal { return w.refs[m] }
	return r
}

var benchCache *benchWorld

func benchWorldOnce(b *testing.B) *benchWorld {
	if benchCache == nil {
		benchCache = newBenchWorld(b, 100_000, 8192)
	}
	return benchCache
}

// latency is a histogram of sampled decision times: 10 ns buckets to 10 µs,
// 1 µs buckets to 1 ms, then one overflow bucket.
type latency struct {
	fine   [1000]int64
	coarse [991]int64
	over   int64
	n      int64
}

func (h *latency) add(d time.Duration) {
	h.n++
	switch ns := int64(d); {
	case ns < 10_000:
		h.fine[ns/10]++
	case ns < 1_000_000:
		h.coarse[(ns-10_000)/1000]++
	default:
		h.over++
	}
}

// quantile returns the upper edge, in ns, of the bucket holding quantile q.
func (h *latency) quantile(q float64) float64 {
	want := int64(math.Ceil(q * float64(h.n)))
	var c int64
	for i, n := range h.fine {
		if c += n; c >= want {
			return float64(i+1) * 10
		}
	}
	for i, n := range h.coarse {
		if c += n; c >= want {
			return 10_000 + float64(i+1)*1000
		}
	}
	return math.Inf(1)
}

const sampleEvery = 8

// Between segments of a run, runDecide times a control: the first
// controlJobs requests decided controlRounds times over, their data in
// cache. Its cost depends on the speed of the core the benchmark runs on
// and hardly on memory, so it tells, for each run, whether the host gave
// the benchmark a whole core: on the reference machine (docs/BENCHMARKS.md)
// it was 311–396 ns with the core to itself and 494–640 ns when the
// host shares the core with other work.
const (
	segment       = 1 << 14
	controlJobs   = 64
	controlRounds = 8
)

// runDecide runs b.N decisions through decide and reports throughput,
// sampled latency quantiles and, with control, the control's cost per
// decision ("in-cache-ns"), measured in the same seconds as the decisions
// but outside their timing.
func runDecide(b *testing.B, w *benchWorld, s *Scratch, control bool) {
	e := w.engine
	h := new(latency)
	// Warm the scratch on every job so steady state allocates nothing.
	for i := range w.jobs {
		e.Decide(&w.jobs[i], w.limits[i], s)
	}
	runtime.GC()
	b.ReportAllocs()
	b.ResetTimer()
	var el, ctl time.Duration
	matched, examined, ctlN := 0, 0, 0
	for i := 0; i < b.N; {
		n := min(segment, b.N-i)
		start := time.Now()
		for ; n > 0; n, i = n-1, i+1 {
			k := i & (len(w.jobs) - 1)
			if i%sampleEvery == 0 {
				t := time.Now()
				matched += e.Decide(&w.jobs[k], w.limits[k], s)
				h.add(time.Since(t))
			} else {
				matched += e.Decide(&w.jobs[k], w.limits[k], s)
			}
			examined += s.considered
		}
		el += time.Since(start)
		if control {
			b.StopTimer()
			ctl += decideInCache(w, s)
			ctlN += controlJobs * controlRounds
			b.StartTimer()
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "decisions/s")
	b.ReportMetric(h.quantile(0.50), "p50-ns")
	b.ReportMetric(h.quantile(0.99), "p99-ns")
	b.ReportMetric(h.quantile(0.999), "p99.9-ns")
	b.ReportMetric(float64(examined)/float64(b.N), "offers/decision")
	if ctlN > 0 {
		b.ReportMetric(float64(ctl.Nanoseconds())/float64(ctlN), "in-cache-ns")
	}
	_ = matched
}

// decideInCache is runDecide's control: it decides the first controlJobs
// requests once to bring them into cache, then controlRounds times over,
// and returns the time those rounds took.
func decideInCache(w *benchWorld, s *Scratch) time.Duration {
	for k := 0; k < controlJobs; k++ {
		w.engine.Decide(&w.jobs[k], w.limits[k], s)
	}
	t := time.Now()
	for r := 0; r < controlRounds; r++ {
		for k := 0; k < controlJobs; k++ {
			w.engine.Decide(&w.jobs[k], w.limits[k], s)
		}
	}
	return time.Since(t)
}

// BenchmarkDecide: the engine's bounded scan over 80 markets, 100k offers,
// with the in-cache control beside it.
func BenchmarkDecide(b *testing.B) {
	w := benchWorldOnce(b)
	runDecide(b, w, NewScratch(), true)
}

// BenchmarkDecideWarm: the same decisions with their requests in cache,
// as brokerd decides a request it has just built; BenchmarkDecide's
// requests are cold, 8,192 of them decided in turn. The requests are read
// eight at a time (Scratch.load, outside the timing) and their eight
// decisions then timed together, so that a clock reading costs an eighth
// of one per decision: decisions/s is b.N over the sum of those times.
func BenchmarkDecideWarm(b *testing.B) {
	w := benchWorldOnce(b)
	e := w.engine
	s := NewScratch()
	for i := range w.jobs {
		e.Decide(&w.jobs[i], w.limits[i], s)
	}
	runtime.GC()
	b.ReportAllocs()
	b.ResetTimer()
	const group = 8
	var busy time.Duration
	for i := 0; i < b.N; i += group {
		n := min(group, b.N-i)
		for j := 0; j < n; j++ {
			s.load(&w.jobs[(i+j)&(len(w.jobs)-1)])
		}
		t := time.Now()
		for j := 0; j < n; j++ {
			k := (i + j) & (len(w.jobs) - 1)
			e.Decide(&w.jobs[k], w.limits[k], s)
		}
		busy += time.Since(t)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/busy.Seconds(), "decisions/s")
}

// BenchmarkDecideCompiled measures what Request.Compile saves: it
// alternates segments of 16,384 decisions over the benchmark's requests
// as built (compiled) and over uncompiled copies of them, and reports
// each side's rate and their ratio. Alternating within one process keeps
// the host's drift, which moves a whole run by ±25% from one minute to
// the next, out of the ratio.
func BenchmarkDecideCompiled(b *testing.B) {
	w := benchWorldOnce(b)
	e := w.engine
	s := NewScratch()
	raw := make([]Request, len(w.jobs))
	for i := range w.jobs {
		raw[i] = w.jobs[i]
		raw[i].compiled, raw[i].num = false, numbered{}
	}
	for i := range w.jobs {
		e.Decide(&w.jobs[i], w.limits[i], s)
		e.Decide(&raw[i], w.limits[i], s)
	}
	runtime.GC()
	b.ReportAllocs()
	b.ResetTimer()
	const segment = 16_384
	var took [2]time.Duration
	var n [2]int
	for i := 0; i < b.N; {
		side, jobs := (i/segment)&1, raw
		if side == 1 {
			jobs = w.jobs
		}
		t := time.Now()
		j := 0
		for ; j < segment && i < b.N; j, i = j+1, i+1 {
			k := i & (len(w.jobs) - 1)
			e.Decide(&jobs[k], w.limits[k], s)
		}
		took[side] += time.Since(t)
		n[side] += j
	}
	b.StopTimer()
	if n[1] == 0 {
		return
	}
	b.ReportMetric(float64(n[1])/took[1].Seconds(), "decisions/s")
	b.ReportMetric(float64(n[0])/took[0].Seconds(), "raw-decisions/s")
	b.ReportMetric((took[0].Seconds()/float64(n[0]))/(took[1].Seconds()/float64(n[1])), "x-vs-raw")
}

// BenchmarkDecideBruteForce: the same decisions with the bound off (every
// offer of the job's markets checked and priced, same integer code).
func BenchmarkDecideBruteForce(b *testing.B) {
	w := benchWorldOnce(b)
	s := NewScratch()
	s.exhaustive = true
	runDecide(b, w, s, false)
}

// BenchmarkDecideVsScan reports, in one run, the engine's decision rate and
// its ratio to the brute-force scans over the same jobs: the exhaustive
// integer scan and Rank (the decimal reference over Snapshot.Candidates).
func BenchmarkDecideVsScan(b *testing.B) {
	w := benchWorldOnce(b)
	e := w.engine
	s, brute := NewScratch(), NewScratch()
	brute.exhaustive = true
	timeIt := func(n int, f func(k int)) float64 {
		t := time.Now()
		for i := 0; i < n; i++ {
			f(i & (len(w.jobs) - 1))
		}
		return time.Since(t).Seconds() / float64(n)
	}
	cands := make([][]Candidate, 512)
	for k := range cands {
		cands[k] = candidatesOf(e.snapshots(&w.jobs[k], nil))
	}
	b.ResetTimer()
	var fast, scan, rank float64
	for i := 0; i < b.N; i++ {
		fast = timeIt(len(w.jobs)*4, func(k int) { e.Decide(&w.jobs[k], w.limits[k], s) })
		scan = timeIt(len(w.jobs), func(k int) { e.Decide(&w.jobs[k], w.limits[k], brute) })
		rank = timeIt(len(cands), func(k int) { Rank(w.rankRequest(k), cands[k], w.limits[k]) })
	}
	b.ReportMetric(1/fast, "decisions/s")
	b.ReportMetric(scan/fast, "x-vs-int-scan")
	b.ReportMetric(rank/fast, "x-vs-Rank")
}

// BenchmarkMatch is Decide plus the conversion to a Result (decimals, map).
func BenchmarkMatch(b *testing.B) {
	w := benchWorldOnce(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := i & (len(w.jobs) - 1)
		w.engine.Match(w.jobs[k], w.limits[k])
	}
}

// BenchmarkApply: price changes through the queue, published per batch.
func BenchmarkApply(b *testing.B) {
	w := benchWorldOnce(b)
	ctx := context.Background()
	var evs []Event
	for _, m := range w.markets[:20] {
		for _, c := range w.engine.Snapshot(m).Candidates()[:20] {
			evs = append(evs, Upsert(c.Offer, c.Provider))
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ev := evs[i%len(evs)]
		ev.Offer.Version = int64(2 + i)
		if err := w.engine.Apply(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.engine.Sync(ctx); err != nil {
		b.Fatal(err)
	}
}

// TestBenchWorldEqualsRank checks the benchmark's own jobs, decided by the
// bounded scan and by the brute-force scan, against Rank.
func TestBenchWorldEqualsRank(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 100k offers")
	}
	w := newBenchWorld(t, 20_000, 1024)
	defer w.engine.Close()
	s, brute := NewScratch(), NewScratch()
	brute.exhaustive = true
	matched, voucherWins := 0, 0
	for k := range w.jobs {
		req := &w.jobs[k]
		want := Rank(w.rankRequest(k), candidatesOf(w.engine.snapshots(req, nil)), w.limits[k])
		w.engine.Decide(req, w.limits[k], s)
		sameMatches(t, fmt.Sprint("job ", k), s.Result().Matches, want.Matches)
		// The brute-force scan the benchmarks compare against, too.
		w.engine.Decide(req, w.limits[k], brute)
		sameMatches(t, fmt.Sprint("job ", k, " brute force"), brute.Result().Matches, want.Matches)
		if len(want.Matches) > 0 {
			matched++
			if want.Matches[0].VoucherID != "" {
				voucherWins++
			}
		}
	}
	t.Logf("%d jobs, %d matched, %d won with a voucher", len(w.jobs), matched, voucherWins)
}

// TestDecideReportsControl runs the Decide benchmark's loop on a small
// world: it reports the decision rate and, for the control, a cost per
// decision of the right size (more than nothing, less than a decision
// takes at worst), and the control allocates nothing.
func TestDecideReportsControl(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a benchmark")
	}
	w := newBenchWorld(t, 2_000, 128)
	defer w.engine.Close()
	res := testing.Benchmark(func(b *testing.B) { runDecide(b, w, NewScratch(), true) })
	ctl, rate := res.Extra["in-cache-ns"], res.Extra["decisions/s"]
	if rate <= 0 || ctl <= 0 || ctl > 100_000 {
		t.Fatalf("decisions/s %v, in-cache-ns %v", rate, ctl)
	}
	if res.AllocsPerOp() != 0 {
		t.Fatalf("%d allocations per decision", res.AllocsPerOp())
	}
	t.Logf("decisions/s %.0f, in-cache-ns %.0f", rate, ctl)
}
