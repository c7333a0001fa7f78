package voucher

import (
	"fmt"
	"math/rand"
	"testing"

	"computebroker/market"

	"github.com/shopspring/decimal"
)

// BenchmarkPrepare compiles the grants of 8192 requests in turn, drawn as
// the matching benchmark draws them (0–3 grants, a third of them domestic,
// a fifth of the SMEs startups), so that, as there, a request's grants are
// mostly not in cache.
var benchReqs = 8192

func BenchmarkPrepare(b *testing.B) {
	rng := rand.New(rand.NewSource(3))
	type req struct {
		sme    market.Account
		class  market.ResourceClass
		grants []Grant
	}
	reqs := make([]req, 8192)
	for i := range reqs {
		r := &reqs[i]
		r.sme = market.Account{ID: fmt.Sprintf("sme%d", i), Role: market.RoleSME, Startup: rng.Intn(5) == 0}
		r.class = gpu
		if rng.Intn(3) == 0 {
			r.class = dom
		}
		for g, n := 0, rng.Intn(4); g < n; g++ {
			p := market.Program{ID: fmt.Sprintf("prog%d", g), Rate: d([]string{"0.20", "0.30", "0.50"}[rng.Intn(3)]),
				AnnualCapPerCompany: d("2000000"), Budget: d("100000000"), ValidFrom: t0.AddDate(0, -3, 0), ValidTo: t0.AddDate(0, 9, 0)}
			if r.class.Domestic {
				p.DomesticRate = d("0.30")
			}
			if rng.Intn(2) == 0 {
				p.PerOrderCap = d("5000")
			}
			r.grants = append(r.grants, Grant{
				Voucher: market.Voucher{ID: fmt.Sprintf("v%d-%d", i, g), ProgramID: p.ID, HolderID: r.sme.ID, ExpiresAt: t0.AddDate(0, 1+rng.Intn(6), 0)},
				Program: p, Available: decimal.New(int64(rng.Intn(5_000_000)), -2), CapLeft: d("1500000"), BudgetLeft: d("80000000"),
			})
		}
	}
	rules := DefaultRules()
	var p Prepared
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := &reqs[i&(benchReqs-1)]
		if !rules.Prepare(&p, t0, r.sme, r.class, r.grants) {
			b.Fatal("refused")
		}
	}
}

func BenchmarkPrepareHot(b *testing.B) {
	benchReqs = 16
	defer func() { benchReqs = 8192 }()
	BenchmarkPrepare(b)
}
