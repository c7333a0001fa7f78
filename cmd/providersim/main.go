// Command providersim is a demo provider fleet: the approved providers of
// a seeded marketplace (marketctl seed) open their provider streams and
// move their offers' prices the way providers do — small random steps
// around their list price, within the public price range of each class,
// cutting prices while their capacity sits idle — so that the storefront
// shows a moving market.
//
//	providersim [--url http://127.0.0.1:8080] [--accounts var/demo-accounts.json]
//	            [--rate 5] [--volatility 0.02] [--seed 1] [--duration 0]
//
// It stops on SIGINT or SIGTERM (or after --duration), closing its
// streams cleanly.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/shopspring/decimal"
)

// accountsFile is the part of marketctl seed's output the fleet reads.
type accountsFile struct {
	Providers []struct {
		ID    string `json:"id"`
		Name  string `json:"name"`
		Token string `json:"token"`
	} `json:"providers"`
	Offers []offerEntry `json:"offers"`
}

// offerEntry is an offer as the API shows it.
type offerEntry struct {
	ID            string `json:"id"`
	ProviderID    string `json:"provider_id"`
	ResourceClass string `json:"resource_class"`
	Region        string `json:"region"`
	Price         string `json:"price"`
	ListPrice     string `json:"list_price"`
	Units         int64  `json:"units"`
	UnitsFree     int64  `json:"units_free"`
}

type config struct {
	url        string
	accounts   string
	rate       float64
	volatility decimal.Decimal
	seed       uint64
	duration   time.Duration
}

func main() {
	var cfg config
	var vol string
	flag.StringVar(&cfg.url, "url", envOr("BROKER_URL", "http://127.0.0.1:8080"), "brokerd base URL")
	flag.StringVar(&cfg.accounts, "accounts", "var/demo-accounts.json", "accounts and offers written by marketctl seed")
	flag.Float64Var(&cfg.rate, "rate", 5, "price updates per second across the fleet")
	flag.StringVar(&vol, "volatility", "0.02", "largest move of one update, as a fraction of the price (0.02 = ±2%)")
	flag.Uint64Var(&cfg.seed, "seed", 1, "random seed (the same seed moves prices the same way)")
	flag.DurationVar(&cfg.duration, "duration", 0, "stop after this long (0: until interrupted)")
	flag.Parse()
	v, err := decimal.NewFromString(vol)
	if err != nil || !v.IsPositive() || v.GreaterThan(decimal.NewFromFloat32(0.5)) {
		fmt.Fprintln(os.Stderr, "providersim: --volatility must be a fraction in (0, 0.5], like 0.02")
		os.Exit(2)
	}
	cfg.volatility = v
	if cfg.rate <= 0 || cfg.rate > 10_000 {
		fmt.Fprintln(os.Stderr, "providersim: --rate must be in (0, 10000]")
		os.Exit(2)
	}
	log.SetFlags(log.Ltime)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cfg.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.duration)
		defer cancel()
	}
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "providersim:", err)
		os.Exit(1)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// simOffer is one offer being priced.
type simOffer struct {
	id, class, region string
	provider          *simProvider
	walk              *Walk
	units, unitsFree  int64
}

func (o *simOffer) market() string { return o.class + "/" + o.region }

// pendingChange is a sent price waiting for its ack.
type pendingChange struct {
	offer    *simOffer
	from, to decimal.Decimal
}

// fleet is the running simulation; mu guards the offers' state and the
// counters.
type fleet struct {
	cfg     config
	verbose bool

	mu       sync.Mutex
	rng      *rand.Rand
	offers   []*simOffer
	pending  map[string]pendingChange
	nextRef  int
	sent     int
	acked    int
	rejected int
	leases   int
	skipped  int
}

func run(ctx context.Context, cfg config) error {
	raw, err := os.ReadFile(cfg.accounts)
	if err != nil {
		return fmt.Errorf("%w (run `marketctl seed` first)", err)
	}
	var acc accountsFile
	if err := json.Unmarshal(raw, &acc); err != nil {
		return fmt.Errorf("%s: %w", cfg.accounts, err)
	}
	base := strings.TrimRight(cfg.url, "/")
	approved := approvedProviders(ctx, base, acc)

	f := &fleet{cfg: cfg, verbose: cfg.rate <= 10, rng: rand.New(rand.NewPCG(cfg.seed, cfg.seed^0x9e3779b97f4a7c15)), pending: map[string]pendingChange{}}
	providers := map[string]*simProvider{}
	for _, p := range acc.Providers {
		if approved != nil && !approved[p.ID] {
			continue
		}
		providers[p.ID] = &simProvider{f: f, id: p.ID, name: p.Name, token: p.Token, base: base}
	}
	client := &http.Client{Timeout: 10 * time.Second}
	for _, o := range acc.Offers {
		p := providers[o.ProviderID]
		if p == nil {
			continue
		}
		current(ctx, client, base, &o) // continue from where the last run left the price
		price, err1 := decimal.NewFromString(o.Price)
		list, err2 := decimal.NewFromString(o.ListPrice)
		if err2 != nil {
			list, err2 = price, err1
		}
		if err1 != nil || err2 != nil {
			return fmt.Errorf("offer %s: bad price %q / list price %q", o.ID, o.Price, o.ListPrice)
		}
		so := &simOffer{id: o.ID, class: o.ResourceClass, region: o.Region, provider: p, walk: NewWalk(o.ResourceClass, list, price),
			units: o.Units, unitsFree: o.UnitsFree}
		p.offers = append(p.offers, so)
		f.offers = append(f.offers, so)
	}
	if len(f.offers) == 0 {
		return errors.New("no offers of approved providers in " + cfg.accounts)
	}
	log.Printf("providersim: %d providers, %d offers, %.4g updates/s, volatility ±%s, seed %d → %s",
		len(providers), len(f.offers), cfg.rate, cfg.volatility.Shift(2).String()+"%", cfg.seed, base)

	var wg sync.WaitGroup
	for _, p := range providers {
		if len(p.offers) == 0 {
			continue
		}
		wg.Add(1)
		go func(p *simProvider) {
			defer wg.Done()
			p.run(ctx)
		}(p)
	}
	f.tick(ctx)
	wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	log.Printf("providersim: stopped: %d price changes sent, %d acknowledged, %d rejected, %d skipped (stream down), %d leases received",
		f.sent, f.acked, f.rejected, f.skipped, f.leases)
	return nil
}

// current refreshes an offer's price and capacity from the broker; on any
// failure the file's values stand.
func current(ctx context.Context, c *http.Client, base string, o *offerEntry) {
	req, err := http.NewRequestWithContext(ctx, "GET", base+"/api/v1/offers/"+o.ID, nil)
	if err != nil {
		return
	}
	resp, err := c.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	var now offerEntry
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&now) != nil || now.Price == "" {
		return
	}
	o.Price, o.Units, o.UnitsFree = now.Price, now.Units, now.UnitsFree
	if now.ListPrice != "" {
		o.ListPrice = now.ListPrice
	}
}

// approvedProviders asks the broker which providers are approved; nil
// (with a warning) when it cannot tell.
func approvedProviders(ctx context.Context, base string, acc accountsFile) map[string]bool {
	if len(acc.Providers) == 0 {
		return nil
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/api/v1/providers", nil)
	req.Header.Set("Authorization", "Bearer "+acc.Providers[0].Token)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		log.Printf("providersim: cannot list providers (%v); trying them all", err)
		return nil
	}
	defer resp.Body.Close()
	var body struct {
		Providers []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
		} `json:"providers"`
	}
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&body) != nil {
		log.Printf("providersim: cannot list providers (status %d); trying them all", resp.StatusCode)
		return nil
	}
	out := map[string]bool{}
	for _, p := range body.Providers {
		out[p.ID] = p.Status == "approved"
	}
	return out
}

// tick sends rate price changes per second, each for an offer picked at
// random, until ctx ends; every few seconds it logs a summary when the
// rate is too high to log each change.
func (f *fleet) tick(ctx context.Context) {
	interval := time.Duration(float64(time.Second) / f.cfg.rate)
	t := time.NewTicker(interval)
	defer t.Stop()
	summary := time.NewTicker(5 * time.Second)
	defer summary.Stop()
	last := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-summary.C:
			if !f.verbose {
				f.mu.Lock()
				log.Printf("%d price changes acknowledged in the last 5 s (%d in all, %d rejected, %d leases)", f.acked-last, f.acked, f.rejected, f.leases)
				last = f.acked
				f.mu.Unlock()
			}
		case <-t.C:
			f.step()
		}
	}
}

// step moves a random offer and sends its new price. A step that rounds
// to the same price moves another offer (a few tries), so that what is
// sent is a change.
func (f *fleet) step() {
	f.mu.Lock()
	var o *simOffer
	var from, to decimal.Decimal
	for try := 0; try < 4; try++ {
		o = f.offers[f.rng.IntN(len(f.offers))]
		from = o.walk.Price()
		to = o.walk.Next(f.rng, f.cfg.volatility, o.unitsFree >= o.units)
		if !to.Equal(from) {
			break
		}
	}
	if to.Equal(from) {
		f.mu.Unlock()
		return
	}
	f.nextRef++
	ref := fmt.Sprintf("sim-%d", f.nextRef)
	f.pending[ref] = pendingChange{offer: o, from: from, to: to}
	f.mu.Unlock()
	msg, _ := json.Marshal(map[string]string{"type": "price", "ref": ref, "offer_id": o.id, "price": to.StringFixed(2)})
	if o.provider.send(msg) {
		f.mu.Lock()
		f.sent++
		f.mu.Unlock()
		return
	}
	f.mu.Lock()
	delete(f.pending, ref)
	f.skipped++
	f.mu.Unlock()
}

// serverMsg is what the provider stream sends.
type serverMsg struct {
	Type    string `json:"type"`
	Ref     string `json:"ref"`
	Version int64  `json:"version"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Lease   struct {
		ID        string `json:"id"`
		OfferID   string `json:"offer_id"`
		Units     int64  `json:"units"`
		Hours     int64  `json:"hours"`
		UnitPrice string `json:"unit_price"`
		SMEID     string `json:"sme_id"`
	} `json:"lease"`
}

func (f *fleet) received(p *simProvider, m serverMsg) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch m.Type {
	case "ack":
		pc, ok := f.pending[m.Ref]
		delete(f.pending, m.Ref)
		f.acked++
		if ok && f.verbose {
			log.Printf("ack    %-26s %-24s %8s → %-8s v%d", p.name, pc.offer.market(), pc.from.StringFixed(2), pc.to.StringFixed(2), m.Version)
		}
	case "error":
		pc, ok := f.pending[m.Ref]
		delete(f.pending, m.Ref)
		f.rejected++
		if ok { // the broker did not take it: the walk goes back
			pc.offer.walk.state = pc.from
		}
		log.Printf("error  %-26s ref %s: %s: %s", p.name, m.Ref, m.Code, m.Message)
	case "lease":
		f.leases++
		for _, o := range p.offers {
			if o.id == m.Lease.OfferID {
				o.unitsFree = max(0, o.unitsFree-m.Lease.Units)
			}
		}
		log.Printf("lease  %-26s %s: %d units × %d h at %s for %s", p.name, m.Lease.ID, m.Lease.Units, m.Lease.Hours, m.Lease.UnitPrice, m.Lease.SMEID)
	}
}

// simProvider is one provider's stream, reconnected while the fleet runs.
type simProvider struct {
	f                     *fleet
	id, name, token, base string
	offers                []*simOffer

	mu sync.Mutex
	ws *websocket.Conn // nil while disconnected
}

// send writes a frame when the stream is up; false when it is not.
func (p *simProvider) send(b []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ws == nil {
		return false
	}
	_ = p.ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := p.ws.WriteMessage(websocket.TextMessage, b); err != nil {
		_ = p.ws.Close()
		p.ws = nil
		return false
	}
	return true
}

// run keeps the stream open until ctx ends, reconnecting with backoff.
func (p *simProvider) run(ctx context.Context) {
	backoff := 500 * time.Millisecond
	for ctx.Err() == nil {
		err := p.session(ctx)
		if ctx.Err() != nil {
			return
		}
		log.Printf("stream %s: %v; reconnecting in %s", p.name, err, backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// session opens the stream and reads it until it fails or ctx ends, then
// closes it with a normal closure.
func (p *simProvider) session(ctx context.Context) error {
	url := "ws" + strings.TrimPrefix(p.base, "http") + "/api/v1/stream/provider"
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	ws, resp, err := websocket.DefaultDialer.DialContext(dctx, url, http.Header{"Authorization": {"Bearer " + p.token}})
	cancel()
	if err != nil {
		if resp != nil {
			return fmt.Errorf("connect: %v (HTTP %d)", err, resp.StatusCode)
		}
		return fmt.Errorf("connect: %w", err)
	}
	p.mu.Lock()
	p.ws = ws
	p.mu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.ws != nil {
			_ = p.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
			_ = p.ws.SetReadDeadline(time.Now().Add(time.Second)) // wait briefly for the server's close
		}
	})
	defer stop()
	defer func() {
		p.mu.Lock()
		_ = ws.Close()
		if p.ws == ws {
			p.ws = nil
		}
		p.mu.Unlock()
	}()
	for {
		_, b, err := ws.ReadMessage()
		if err != nil {
			return err
		}
		var m serverMsg
		if json.Unmarshal(b, &m) == nil {
			p.f.received(p, m)
		}
	}
}
