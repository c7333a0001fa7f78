package matching

import (
	"fmt"
	"hash/fnv"
	"math/rand"
	"time"

	"computebroker/market"
	"computebroker/voucher"

	"github.com/shopspring/decimal"
)

// world is a random market: books of a few markets and a pool of providers.
type world struct {
	rng       *rand.Rand
	classes   []market.ResourceClass
	regions   []string
	providers []market.Account
	books     map[market.MarketKey]*Book
	offers    []market.Offer
	now       time.Time
	seq       int
}

func newWorld(seed int64) *world {
	w := &world{
		rng: rand.New(rand.NewSource(seed)),
		classes: []market.ResourceClass{
			{ID: "gpu.h100-80g", Unit: market.UnitGPUHour},
			{ID: "gpu.910b-64g", Unit: market.UnitGPUHour, Domestic: true},
		},
		regions: []string{"cn-north", "cn-east", "cn-south"},
		books:   map[market.MarketKey]*Book{},
		now:     time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC),
	}
	statuses := []market.ProviderStatus{market.ProviderApproved, market.ProviderApproved, market.ProviderApproved, market.ProviderApproved, market.ProviderPending, market.ProviderSuspended}
	for i := 0; i < 8; i++ {
		p := market.Account{ID: fmt.Sprintf("prov%d", i), Role: market.RoleProvider,
			Status: statuses[w.rng.Intn(len(statuses))], RelatedPartyKeys: []string{fmt.Sprintf("tax:%d", i)}}
		if w.rng.Intn(3) > 0 {
			p.Certifications = append(p.Certifications, "mlps-3")
		}
		if w.rng.Intn(3) == 0 {
			p.Certifications = append(p.Certifications, "iso-27001")
		}
		w.providers = append(w.providers, p)
	}
	for _, c := range w.classes {
		for _, r := range w.regions {
			k := market.MarketKey{Class: c.ID, Region: r}
			w.books[k] = NewBook(k)
		}
	}
	return w
}

func (w *world) pick(xs []string) string { return xs[w.rng.Intn(len(xs))] }

func (w *world) subset(xs []string) []string {
	var out []string
	for _, x := range xs {
		if w.rng.Intn(2) == 0 {
			out = append(out, x)
		}
	}
	return out
}

// price draws from a narrow range so that ties on gross and net are common.
func (w *world) price() decimal.Decimal {
	switch w.rng.Intn(4) {
	case 0:
		return decimal.New(int64(1000+w.rng.Intn(8)*25), -2) // 10.00, 10.25, …
	case 1:
		return decimal.New(int64(100000+w.rng.Intn(2000)), -4)
	case 2:
		return decimal.New(int64(1+w.rng.Intn(30)), -4) // sub-cent prices: rounding edges
	default:
		return decimal.New(int64(900+w.rng.Intn(400)), -2)
	}
}

func (w *world) offer() market.Offer {
	w.seq++
	c := w.classes[w.rng.Intn(len(w.classes))]
	p := w.providers[w.rng.Intn(len(w.providers))]
	units := int64(1 + w.rng.Intn(64))
	price := w.price()
	list := price
	switch w.rng.Intn(4) {
	case 0:
		list = price.Mul(decimal.RequireFromString("0.8")).Round(4) // exactly 25% above: edge of the guard
	case 1:
		list = price.Mul(decimal.RequireFromString("0.79")).Round(4)
	case 2:
		list = decimal.Zero
	}
	return market.Offer{
		ID: fmt.Sprintf("o%05d", w.seq), ProviderID: p.ID, ResourceClass: c.ID, Region: w.pick(w.regions),
		Units: units, UnitsFree: int64(w.rng.Intn(int(units) + 1)), Price: price, ListPrice: list,
		MaxHours: int64(1 + w.rng.Intn(200)), Status: market.OfferActive, Version: 1,
		PriceAt: w.now.Add(-time.Duration(w.rng.Intn(3)) * time.Minute),
	}
}

func (w *world) provider(id string) market.Account {
	for _, p := range w.providers {
		if p.ID == id {
			return p
		}
	}
	panic(id)
}

// fill adds n random offers to the books.
func (w *world) fill(n int) {
	for i := 0; i < n; i++ {
		o := w.offer()
		if err := w.books[o.Market()].Upsert(o, w.provider(o.ProviderID)); err != nil {
			panic(err)
		}
		w.offers = append(w.offers, o)
	}
	for _, b := range w.books {
		b.Publish()
	}
}

var rates = []string{"0.10", "0.20", "0.30", "0.3333", "0.60"}

func (w *world) grant(i int) voucher.Grant {
	d := decimal.RequireFromString
	p := market.Program{
		ID: fmt.Sprintf("prog%d", w.rng.Intn(3)), Rate: d(w.pick(rates)),
		AnnualCapPerCompany: d("1000000"), Budget: d("1e9"),
		ValidFrom: w.now.AddDate(0, -1, 0), ValidTo: w.now.AddDate(0, 6, 0),
	}
	if w.rng.Intn(3) == 0 {
		p.DomesticRate = d(w.pick(rates))
	}
	if w.rng.Intn(3) == 0 {
		p.StartupRate = d(w.pick(rates))
	}
	if w.rng.Intn(3) == 0 {
		p.PerOrderCap = decimal.New(int64(w.rng.Intn(50000)), -2)
	}
	switch w.rng.Intn(8) {
	case 0:
		p.ValidTo = w.now
	case 1:
		p.ValidFrom = w.now.Add(time.Hour)
	}
	if w.rng.Intn(4) == 0 {
		p.ResourceClasses = w.subset([]string{"gpu.h100-80g", "gpu.910b-64g", "cpu.standard"})
	}
	if w.rng.Intn(3) == 0 {
		p.Regions = w.subset(w.regions)
	}
	if w.rng.Intn(2) == 0 {
		ids := make([]string, len(w.providers))
		for i, pr := range w.providers {
			ids[i] = pr.ID
		}
		p.Providers = w.subset(ids)
		if len(p.Providers) > 2 {
			p.Providers = p.Providers[:2]
		}
	}
	amount := func() decimal.Decimal {
		switch w.rng.Intn(4) {
		case 0:
			return decimal.New(int64(w.rng.Intn(2000)), -2)
		case 1:
			return decimal.New(int64(w.rng.Intn(2000000)), -3) // sub-cent holds
		default:
			return decimal.New(int64(w.rng.Intn(10000000)), -2)
		}
	}
	return voucher.Grant{
		Voucher: market.Voucher{ID: fmt.Sprintf("v%d", i), ProgramID: p.ID, HolderID: "sme1",
			ExpiresAt: w.now.Add(time.Duration(w.rng.Intn(4)-1) * 24 * time.Hour)},
		Program: p, Available: amount(), CapLeft: amount(), BudgetLeft: amount(),
	}
}

func (w *world) request() Request {
	d := decimal.RequireFromString
	c := w.classes[w.rng.Intn(len(w.classes))]
	req := Request{
		Job: market.Job{ResourceClass: c.ID, Units: int64(1 + w.rng.Intn(40)), Hours: int64(1 + w.rng.Intn(150)),
			UseVouchers: w.rng.Intn(4) > 0, TimeInForce: market.IOC},
		SME:   market.Account{ID: "sme1", Role: market.RoleSME, Startup: w.rng.Intn(3) == 0, RelatedPartyKeys: []string{"tax:sme"}},
		Class: c,
		Now:   w.now,
		Rules: voucher.DefaultRules(),
	}
	if w.rng.Intn(4) == 0 {
		req.SME.RelatedPartyKeys = append(req.SME.RelatedPartyKeys, fmt.Sprintf("tax:%d", w.rng.Intn(8)))
	}
	if w.rng.Intn(3) > 0 {
		req.Job.Regions = w.subset(w.regions)
		if len(req.Job.Regions) > 0 && w.rng.Intn(5) == 0 {
			req.Job.Regions = append(req.Job.Regions, req.Job.Regions[0]) // a duplicate region
		}
	}
	if w.rng.Intn(3) == 0 {
		req.Job.MaxPrice = w.price()
	}
	if w.rng.Intn(3) == 0 {
		req.Job.Certifications = []string{"mlps-3"}
	}
	for i, n := 0, w.rng.Intn(5); i < n; i++ {
		req.Grants = append(req.Grants, w.grant(i))
	}
	if w.rng.Intn(2) == 0 {
		req.Reference = marketReference
	}
	if w.rng.Intn(6) == 0 {
		req.Rules = voucher.Rules{GuardRatio: d("1.2345678"), AlertRatio: d("1.1")}
	}
	return req
}

// snaps returns the published snapshots of req's markets, as the engine
// picks them.
func (w *world) snaps(req *Request) []*Snapshot {
	var out []*Snapshot
	regions := req.Job.Regions
	if len(regions) == 0 {
		regions = w.regions
	}
	seen := map[string]bool{}
	for _, r := range regions {
		if seen[r] {
			continue
		}
		seen[r] = true
		if b := w.books[market.MarketKey{Class: req.Job.ResourceClass, Region: r}]; b != nil {
			out = append(out, b.Snapshot())
		}
	}
	return out
}

func candidatesOf(snaps []*Snapshot) []Candidate {
	var out []Candidate
	for _, s := range snaps {
		out = append(out, s.Candidates()...)
	}
	return out
}

// marketReference is a reference price per market, as brokerd's 30-day
// VWAP: near the world's prices, with many decimals, with more digits
// than 64 bits hold, or none yet (zero), depending on the market.
func marketReference(k market.MarketKey) decimal.Decimal {
	h := fnv.New32a()
	h.Write([]byte(k.Class + "/" + k.Region))
	x := h.Sum32()
	base := decimal.New(int64(900+x%500), -2) // 9.00 … 13.99
	switch x / 500 % 8 {
	case 0:
		return decimal.Zero
	case 1:
		return base.Add(decimal.RequireFromString("0.00000003"))
	case 2:
		return base.Add(decimal.RequireFromString("0.0000000000000000003"))
	case 3:
		return decimal.New(int64(1+x%30), -4) // as low as the sub-cent prices
	}
	return base
}
