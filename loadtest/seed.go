package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// api is a small client of brokerd's REST API.
type api struct {
	base string
	http *http.Client
}

func newAPI(base string) *api {
	return &api{base: base, http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
}

// do sends a JSON request; a 429 is retried after its Retry-After, within
// ctx.
func (a *api) do(ctx context.Context, method, path, token string, body, out any) error {
	var raw []byte
	if body != nil {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			return err
		}
	}
	for {
		req, err := http.NewRequestWithContext(ctx, method, a.base+path, bytes.NewReader(raw))
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := a.http.Do(req)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			wait, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(max(wait, 1)) * time.Second):
			}
			continue
		}
		if resp.StatusCode >= 300 {
			return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, strings.TrimSpace(string(b)))
		}
		if out != nil {
			return json.Unmarshal(b, out)
		}
		return nil
	}
}

// marketKey is a (resource class, region) pair.
type marketKey struct{ class, region string }

func (m marketKey) query() string { return "?resource_class=" + m.class + "&region=" + m.region }

// fixture is what seeding made: the accounts and offers this run drives.
type fixture struct {
	markets    []marketKey // where the offers are
	idleMarket marketKey   // kept free of offers: idle subscribers follow it
	providers  []providerFix
	offers     []offerFix
	offerIndex map[string]int32 // offer id -> index in offers; read-only once seeded
}

type providerFix struct {
	id, token string
	offers    []int32
}

type offerFix struct {
	id      string
	market  int
	version int64 // when seeded
}

// seed creates a regulator, the providers (approved) and their offers
// through the public API, cfg.workers calls at a time.
func seed(ctx context.Context, cfg config) (*fixture, error) {
	a := newAPI(cfg.urls[0])
	var classes struct {
		ResourceClasses []struct {
			ID string `json:"id"`
		} `json:"resource_classes"`
	}
	var regions struct {
		Regions []struct {
			ID string `json:"id"`
		} `json:"regions"`
	}
	if err := a.do(ctx, "GET", "/api/v1/resource-classes", "", nil, &classes); err != nil {
		return nil, err
	}
	if err := a.do(ctx, "GET", "/api/v1/regions", "", nil, &regions); err != nil {
		return nil, err
	}
	fx := &fixture{offerIndex: map[string]int32{}}
	for _, c := range classes.ResourceClasses {
		for _, r := range regions.Regions {
			fx.markets = append(fx.markets, marketKey{c.ID, r.ID})
		}
	}
	if len(fx.markets) < 2 {
		return nil, fmt.Errorf("the broker lists %d markets; need at least 2", len(fx.markets))
	}
	fx.idleMarket = fx.markets[len(fx.markets)-1]
	fx.markets = fx.markets[:len(fx.markets)-1]

	type created struct {
		ID    string `json:"id"`
		Token string `json:"token"`
	}
	run := time.Now().UTC().Format("150405")
	var reg created
	if err := a.do(ctx, "POST", "/api/v1/accounts", cfg.adminToken, map[string]any{"role": "regulator", "name": "loadtest regulator " + run}, &reg); err != nil {
		return nil, fmt.Errorf("create regulator (is the admin token right?): %w", err)
	}
	fx.providers = make([]providerFix, cfg.providers)
	fx.offers = make([]offerFix, cfg.providers*cfg.offers)
	jobs := make(chan int)
	errs := make(chan error, cfg.workers)
	var wg sync.WaitGroup
	for w := 0; w < cfg.workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := seedProvider(ctx, a, cfg, fx, reg.Token, run, i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := 0; i < cfg.providers; i++ {
		select {
		case jobs <- i:
		case err = <-errs:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	if err != nil {
		return nil, err
	}
	for i, o := range fx.offers {
		fx.offerIndex[o.id] = int32(i)
	}
	return fx, nil
}

func seedProvider(ctx context.Context, a *api, cfg config, fx *fixture, regToken, run string, i int) error {
	var p struct {
		ID    string `json:"id"`
		Token string `json:"token"`
	}
	name := fmt.Sprintf("loadtest provider %s-%d", run, i)
	if err := a.do(ctx, "POST", "/api/v1/accounts", cfg.adminToken, map[string]any{"role": "provider", "name": name}, &p); err != nil {
		return err
	}
	if err := a.do(ctx, "POST", "/api/v1/providers/"+p.ID+"/approve", regToken, nil, nil); err != nil {
		return err
	}
	fx.providers[i] = providerFix{id: p.ID, token: p.Token}
	for j := 0; j < cfg.offers; j++ {
		k := i*cfg.offers + j
		m := k % len(fx.markets)
		var o struct {
			ID      string `json:"id"`
			Version int64  `json:"version"`
		}
		body := map[string]any{"resource_class": fx.markets[m].class, "region": fx.markets[m].region, "units": 64, "price": priceOf(k, 0), "max_hours": 720}
		if err := a.do(ctx, "POST", "/api/v1/offers", p.Token, body, &o); err != nil {
			return err
		}
		fx.offers[k] = offerFix{id: o.ID, market: m, version: o.Version}
		fx.providers[i].offers = append(fx.providers[i].offers, int32(k))
	}
	return nil
}

// priceOf is the n-th price of offer k: valid, two decimals, always moving.
func priceOf(k int, n int64) string {
	c := int64(k*37)%500 + n%97
	return strconv.FormatInt(10+c/100, 10) + "." + fmt.Sprintf("%02d", c%100)
}
