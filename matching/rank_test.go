package matching

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"computebroker/market"
	"computebroker/voucher"

	"github.com/shopspring/decimal"
)

var (
	d    = decimal.RequireFromString
	t0   = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	h100 = market.ResourceClass{ID: "gpu.h100-80g", Unit: market.UnitGPUHour}
)

func prov(id string) market.Account {
	return market.Account{ID: id, Role: market.RoleProvider, Status: market.ProviderApproved,
		RelatedPartyKeys: []string{"tax:" + id}, Certifications: []string{"mlps-3"}}
}

func off(id, provider, price string) market.Offer {
	return market.Offer{ID: id, ProviderID: provider, ResourceClass: h100.ID, Region: "cn-east",
		Units: 16, UnitsFree: 16, Price: d(price), ListPrice: d(price), MaxHours: 720,
		Status: market.OfferActive, PriceAt: t0.Add(-time.Hour)}
}

func cand(id, provider, price string) Candidate {
	return Candidate{Offer: off(id, provider, price), Provider: prov(provider)}
}

func request() Request {
	return Request{
		Job: market.Job{ResourceClass: h100.ID, Regions: []string{"cn-east"}, Units: 8, Hours: 10,
			Certifications: []string{"mlps-3"}, TimeInForce: market.IOC},
		SME:   market.Account{ID: "sme1", Role: market.RoleSME, RelatedPartyKeys: []string{"tax:S1"}},
		Class: h100,
		Now:   t0,
		Rules: voucher.DefaultRules(),
	}
}

func TestCheckers(t *testing.T) {
	tests := []struct {
		name string
		req  func(*Request)
		c    func(*Candidate)
		want Reason
	}{
		{name: "eligible", want: ReasonNone},
		{name: "pending provider", c: func(c *Candidate) { c.Provider.Status = market.ProviderPending }, want: ReasonProviderNotApproved},
		{name: "suspended provider", c: func(c *Candidate) { c.Provider.Status = market.ProviderSuspended }, want: ReasonProviderSuspended},
		{name: "revoked provider", c: func(c *Candidate) { c.Provider.Revoked = true }, want: ReasonProviderNotApproved},
		{name: "not a provider", c: func(c *Candidate) { c.Provider.Role = market.RoleSME }, want: ReasonProviderNotApproved},
		{name: "deleted offer", c: func(c *Candidate) { c.Offer.Status = market.OfferDeleted }, want: ReasonOfferInactive},
		{name: "wrong class", c: func(c *Candidate) { c.Offer.ResourceClass = "gpu.a800-80g" }, want: ReasonWrongClass},
		{name: "class from Request.Class when job has none", req: func(r *Request) { r.Job.ResourceClass = "" }, want: ReasonNone},
		{name: "wrong region", c: func(c *Candidate) { c.Offer.Region = "cn-west" }, want: ReasonWrongRegion},
		{name: "one of several regions", req: func(r *Request) { r.Job.Regions = []string{"cn-north", "cn-east"} }, want: ReasonNone},
		{name: "any region", req: func(r *Request) { r.Job.Regions = nil }, c: func(c *Candidate) { c.Offer.Region = "cn-west" }, want: ReasonNone},
		{name: "too few units", c: func(c *Candidate) { c.Offer.UnitsFree = 7 }, want: ReasonTooFewUnits},
		{name: "exactly enough units", c: func(c *Candidate) { c.Offer.UnitsFree = 8 }, want: ReasonNone},
		{name: "too few hours", c: func(c *Candidate) { c.Offer.MaxHours = 9 }, want: ReasonTooFewHours},
		{name: "exactly enough hours", c: func(c *Candidate) { c.Offer.MaxHours = 10 }, want: ReasonNone},
		{name: "over max price", req: func(r *Request) { r.Job.MaxPrice = d("19.9999") }, want: ReasonOverMaxPrice},
		{name: "at max price", req: func(r *Request) { r.Job.MaxPrice = d("20") }, want: ReasonNone},
		{name: "max price finer than ticks", req: func(r *Request) { r.Job.MaxPrice = d("19.99999") }, want: ReasonOverMaxPrice},
		{name: "huge max price", req: func(r *Request) { r.Job.MaxPrice = d("1e40") }, want: ReasonNone},
		{name: "missing certification", req: func(r *Request) { r.Job.Certifications = []string{"mlps-3", "iso-27001"} }, want: ReasonMissingCertifications},
		{name: "no certification asked", c: func(c *Candidate) { c.Provider.Certifications = nil }, req: func(r *Request) { r.Job.Certifications = nil }, want: ReasonNone},
		{name: "price not in ticks", c: func(c *Candidate) { c.Offer.Price = d("20.00001") }, want: ReasonInvalidPrice},
		{name: "first failing checker counts", c: func(c *Candidate) { c.Offer.Region = "cn-west"; c.Offer.UnitsFree = 1 }, want: ReasonWrongRegion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := request()
			if tt.req != nil {
				tt.req(&req)
			}
			c := cand("o1", "p1", "20.00")
			if tt.c != nil {
				tt.c(&c)
			}
			q := newQuery(&req)
			sl := candidateSlot(c)
			if got := defaultChain.check(&q, &sl); got != tt.want {
				t.Fatalf("check = %v, want %v", got, tt.want)
			}
			res := Rank(req, []Candidate{c}, 0)
			if tt.want == ReasonNone {
				if len(res.Matches) != 1 || len(res.Rejected) != 0 {
					t.Fatalf("Rank = %+v, want one match", res)
				}
			} else if len(res.Matches) != 0 || !reflect.DeepEqual(res.Rejected, map[string]int{tt.want.String(): 1}) {
				t.Fatalf("Rank rejected %v, want %s", res.Rejected, tt.want)
			}
		})
	}
}

func TestRankReasonsAndPricing(t *testing.T) {
	req := request()
	req.Job.MaxPrice = d("25")
	cands := []Candidate{cand("a", "p1", "21.50"), cand("b", "p2", "26"), cand("c", "p3", "30"), cand("d", "p4", "20.125")}
	cands[2].Provider.Status = market.ProviderSuspended
	res := Rank(req, cands, 0)
	want := map[string]int{"over_max_price": 1, "provider_suspended": 1}
	if !reflect.DeepEqual(res.Rejected, want) || res.Considered != 4 {
		t.Fatalf("rejected %v considered %d", res.Rejected, res.Considered)
	}
	if len(res.Matches) != 2 || res.Matches[0].Offer.ID != "d" || res.Matches[1].Offer.ID != "a" {
		t.Fatalf("matches %v", ids(res.Matches))
	}
	m := res.Matches[0] // 20.125 × 8 × 10 = 1610.00
	if !m.Gross.Equal(d("1610")) || !m.Net.Equal(d("1610")) || !m.Discount.IsZero() || m.VoucherID != "" || !m.UnitPrice.Equal(d("20.125")) {
		t.Fatalf("match %+v", m)
	}
}

func ids(ms []Match) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Offer.ID
	}
	return out
}

func grantFor(id string, providers []string, expires time.Time) voucher.Grant {
	return voucher.Grant{
		Voucher: market.Voucher{ID: id, ProgramID: "prog-" + id, HolderID: "sme1", Amount: d("100000"), Balance: d("100000"), ExpiresAt: expires},
		Program: market.Program{ID: "prog-" + id, Rate: d("0.30"), AnnualCapPerCompany: d("2000000"), Budget: d("1e8"),
			ValidFrom: t0.AddDate(-1, 0, 0), ValidTo: t0.AddDate(1, 0, 0), Providers: providers},
		Available: d("100000"), CapLeft: d("2000000"), BudgetLeft: d("1e8"),
	}
}

// A voucher scoped to provider B makes B's dearer offer win when B's net is lower.
func TestScopedVoucherFlipsWinner(t *testing.T) {
	cands := []Candidate{cand("a", "A", "20.00"), cand("b", "B", "21.50")}
	tests := []struct {
		name    string
		use     bool
		grants  []voucher.Grant
		winner  string
		net     string
		voucher string
	}{
		{"no voucher: cheapest gross", false, nil, "a", "1600.00", ""},
		{"vouchers off: grants ignored", false, []voucher.Grant{grantFor("vB", []string{"B"}, t0.AddDate(0, 1, 0))}, "a", "1600.00", ""},
		// B: 21.50 × 80 = 1720.00, 30% = 516.00, net 1204.00 < 1600.00
		{"scoped to B: dearer B wins", true, []voucher.Grant{grantFor("vB", []string{"B"}, t0.AddDate(0, 1, 0))}, "b", "1204.00", "vB"},
		{"scoped to A: A stays", true, []voucher.Grant{grantFor("vA", []string{"A"}, t0.AddDate(0, 1, 0))}, "a", "1120.00", "vA"},
		{"unscoped: both discounted, A cheaper", true, []voucher.Grant{grantFor("v", nil, t0.AddDate(0, 1, 0))}, "a", "1120.00", "v"},
		{"B's voucher nearly spent: A wins", true, []voucher.Grant{func() voucher.Grant {
			g := grantFor("vB", []string{"B"}, t0.AddDate(0, 1, 0))
			g.Available = d("119.99") // B net 1600.01 > 1600.00
			return g
		}()}, "a", "1600.00", ""},
		{"B's voucher at break-even: tie → lower unit price", true, []voucher.Grant{func() voucher.Grant {
			g := grantFor("vB", []string{"B"}, t0.AddDate(0, 1, 0))
			g.Available = d("120.00") // B net 1600.00 = A net, A has the lower unit price
			return g
		}()}, "a", "1600.00", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := request()
			req.Job.UseVouchers = tt.use
			req.Grants = tt.grants
			res := Rank(req, cands, 0)
			if len(res.Matches) != 2 {
				t.Fatalf("matches %v", ids(res.Matches))
			}
			m := res.Matches[0]
			if m.Offer.ID != tt.winner || !m.Net.Equal(d(tt.net)) || m.VoucherID != tt.voucher {
				t.Fatalf("winner %s net %s voucher %q, want %s %s %q", m.Offer.ID, m.Net, m.VoucherID, tt.winner, tt.net, tt.voucher)
			}
			if !m.Net.Equal(m.Gross.Sub(m.Discount)) {
				t.Fatalf("net %s != gross %s − discount %s", m.Net, m.Gross, m.Discount)
			}
		})
	}
}

func TestRankTies(t *testing.T) {
	at := func(c Candidate, ts time.Time) Candidate { c.Offer.PriceAt = ts; return c }
	tests := []struct {
		name  string
		cands []Candidate
		want  []string
	}{
		{"lower net first", []Candidate{cand("x", "p1", "20.0001"), cand("y", "p2", "20.00")}, []string{"y", "x"}}, // 1600.01 vs 1600.00
		{"same price: earlier price time", []Candidate{at(cand("x", "p1", "20"), t0.Add(-time.Minute)), at(cand("y", "p2", "20"), t0.Add(-time.Hour))}, []string{"y", "x"}},
		{"same price and time: offer id", []Candidate{cand("z", "p1", "20"), cand("m", "p2", "20"), cand("q", "p3", "20")}, []string{"m", "q", "z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := Rank(request(), tt.cands, 0)
			if !reflect.DeepEqual(ids(res.Matches), tt.want) {
				t.Fatalf("order %v, want %v", ids(res.Matches), tt.want)
			}
		})
	}
	// Equal net, different unit price: 20.0001 × 1 × 1 and 20.0049 × 1 × 1 both
	// gross 20.00; the lower unit price wins.
	req := request()
	req.Job.Units, req.Job.Hours = 1, 1
	res := Rank(req, []Candidate{cand("hi", "p1", "20.0049"), cand("lo", "p2", "20.0001")}, 0)
	if !res.Matches[0].Net.Equal(res.Matches[1].Net) || res.Matches[0].Offer.ID != "lo" {
		t.Fatalf("tie on net: %v nets %s %s", ids(res.Matches), res.Matches[0].Net, res.Matches[1].Net)
	}
}

func TestRankLimit(t *testing.T) {
	var cands []Candidate
	for i := 0; i < 10; i++ {
		cands = append(cands, cand(fmt.Sprintf("o%02d", i), "p1", fmt.Sprintf("%d", 30-i)))
	}
	for _, tt := range []struct{ limit, want int }{{0, 10}, {-1, 10}, {3, 3}, {20, 10}} {
		res := Rank(request(), cands, tt.limit)
		if len(res.Matches) != tt.want {
			t.Errorf("limit %d: %d matches", tt.limit, len(res.Matches))
		}
		if res.Matches[0].Offer.ID != "o09" {
			t.Errorf("limit %d: best %s", tt.limit, res.Matches[0].Offer.ID)
		}
	}
	res := Rank(request(), nil, 1)
	if len(res.Matches) != 0 || res.Rejected == nil || res.Considered != 0 {
		t.Errorf("empty: %+v", res)
	}
}
