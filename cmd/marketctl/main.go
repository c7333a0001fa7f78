// Command marketctl is the operator's and regulator's command line: it seeds
// a demo marketplace and reads the market through the public API.
//
//	marketctl seed   [--url U] [--admin-token T | --admin-token-file F] [--out F]
//	marketctl offers [--url U] [--class C] [--region R]
//	marketctl trades [--url U] --token T
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "seed":
		err = seed(os.Args[2:])
	case "offers":
		err = offers(os.Args[2:])
	case "trades":
		err = trades(os.Args[2:])
	case "-h", "--help", "help":
		usage()
		return
	default:
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "marketctl:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage:
  marketctl seed   [--url http://127.0.0.1:8080] [--admin-token T | --admin-token-file var/admin.token] [--out var/demo-accounts.json]
  marketctl offers [--url U] [--class gpu.h100-80g] [--region cn-east]
  marketctl trades [--url U] --token REGULATOR_TOKEN`)
}

type client struct {
	base  string
	token string
	http  *http.Client
}

func (c *client) do(method, path string, body any, out any, headers ...string) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, strings.TrimSpace(string(raw)))
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

func (c *client) as(token string) *client { return &client{base: c.base, token: token, http: c.http} }

func common(fs *flag.FlagSet) *string {
	return fs.String("url", envOr("BROKER_URL", "http://127.0.0.1:8080"), "brokerd base URL")
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

type created struct {
	ID    string `json:"id"`
	Token string `json:"token"`
	Name  string `json:"name"`
	Role  string `json:"role"`
}

// demoProvider is a provider of the demo, after public list prices of
// shared/market-reference.md.
type demoProvider struct {
	name    string
	keys    []string
	certs   []string
	approve bool
	// offers: class, region, units, price
	offers [][4]any
}

var demoProviders = []demoProvider{
	{"Yangtze Compute Centre", []string{"tax:91310000YCC"}, []string{"mlps-3"}, true, [][4]any{
		{"gpu.h100-80g", "cn-east", 64, "21.00"}, {"gpu.a800-80g", "cn-east", 128, "9.80"}, {"gpu.l40s-48g", "cn-east", 32, "10.50"},
		{"cpu.standard", "cn-east", 4096, "0.24"}}},
	{"Pearl River AI Cloud", []string{"tax:91440300PRA"}, []string{"mlps-3", "iso27001"}, true, [][4]any{
		{"gpu.h100-80g", "cn-south", 32, "22.50"}, {"gpu.h20-96g", "cn-south", 64, "16.00"}, {"gpu.rtx4090-24g", "cn-south", 96, "2.50"},
		{"cpu.highmem", "cn-south", 2048, "0.35"}}},
	{"Tianfu Ascend Centre", []string{"tax:91510100TAC"}, []string{"mlps-3"}, true, [][4]any{
		{"gpu.910b-64g", "cn-west", 256, "13.00"}, {"gpu.910b-64g", "cn-north", 64, "13.80"}, {"cpu.standard", "cn-west", 2048, "0.20"}}},
	{"Jingjin Supercomputing", []string{"tax:91110000JJS"}, nil, true, [][4]any{
		{"gpu.h100-80g", "cn-north", 16, "20.40"}, {"gpu.a800-80g", "cn-north", 64, "10.20"}, {"gpu.h20-96g", "cn-north", 32, "15.60"}}},
	{"Small Node Co-op", []string{"tax:91330100SNC"}, nil, true, [][4]any{
		{"gpu.rtx4090-24g", "cn-east", 8, "2.20"}, {"gpu.l40s-48g", "cn-east", 8, "9.90"}}},
	{"Pending Newcomer Ltd", []string{"tax:91320500PNL"}, nil, false, [][4]any{
		{"gpu.h100-80g", "cn-east", 8, "14.00"}}},
}

var demoSMEs = []struct {
	name, region, size string
	startup            bool
	keys               []string
}{
	{"Lingxi Vision (startup)", "cn-east", "micro", true, []string{"tax:91310115LXV"}},
	{"Huaxia Bio Models", "cn-north", "small", false, []string{"tax:91110108HBM"}},
	{"Minjiang Robotics", "cn-south", "medium", false, []string{"tax:91350100MJR"}},
}

func seed(args []string) error {
	fs := flag.NewFlagSet("seed", flag.ExitOnError)
	base := common(fs)
	token := fs.String("admin-token", os.Getenv("BROKER_ADMIN_TOKEN"), "operator token")
	tokenFile := fs.String("admin-token-file", "var/admin.token", "file holding the operator token")
	out := fs.String("out", "var/demo-accounts.json", "where to write the demo accounts and tokens")
	_ = fs.Parse(args)
	if *token == "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("no --admin-token and cannot read %s: %w", *tokenFile, err)
		}
		*token = strings.TrimSpace(string(b))
	}
	admin := &client{base: strings.TrimRight(*base, "/"), token: *token, http: &http.Client{Timeout: 30 * time.Second}}

	account := func(body map[string]any) (created, error) {
		var c created
		err := admin.do("POST", "/api/v1/accounts", body, &c)
		return c, err
	}
	reg, err := account(map[string]any{"role": "regulator", "name": "Municipal Computing Power Office"})
	if err != nil {
		return err
	}
	regc := admin.as(reg.Token)
	type seeded struct {
		Regulator created          `json:"regulator"`
		Providers []created        `json:"providers"`
		SMEs      []created        `json:"smes"`
		Programs  []map[string]any `json:"programs"`
		Vouchers  []map[string]any `json:"vouchers"`
		Offers    []map[string]any `json:"offers"`
	}
	res := seeded{Regulator: reg}
	var approved []string
	for _, p := range demoProviders {
		c, err := account(map[string]any{"role": "provider", "name": p.name, "size": "large", "related_party_keys": p.keys, "certifications": nonNil(p.certs)})
		if err != nil {
			return err
		}
		res.Providers = append(res.Providers, c)
		if p.approve {
			if err := regc.do("POST", "/api/v1/providers/"+c.ID+"/approve", nil, nil); err != nil {
				return err
			}
			approved = append(approved, c.ID)
		}
		pc := admin.as(c.Token)
		for _, o := range p.offers {
			var off map[string]any
			body := map[string]any{"resource_class": o[0], "region": o[1], "units": o[2], "price": o[3], "max_hours": 720,
				"specs": map[string]any{"interconnect": "RoCE 200G", "node_gpus": 8}}
			if err := pc.do("POST", "/api/v1/offers", body, &off); err != nil {
				return err
			}
			res.Offers = append(res.Offers, off)
		}
	}
	for _, s := range demoSMEs {
		c, err := account(map[string]any{"role": "sme", "name": s.name, "region": s.region, "size": s.size, "startup": s.startup, "related_party_keys": s.keys})
		if err != nil {
			return err
		}
		res.SMEs = append(res.SMEs, c)
	}
	year := time.Now().UTC().Year()
	from := fmt.Sprintf("%d-01-01T00:00:00Z", year)
	to := fmt.Sprintf("%d-01-01T00:00:00Z", year+2)
	programs := []map[string]any{
		{"name": "Shanghai-style AI compute voucher", "rate": "0.30", "domestic_rate": "0.40", "startup_rate": "0.50",
			"per_order_cap": "50000.00", "annual_cap_per_company": "2000000.00", "budget": "600000000.00",
			"valid_from": from, "valid_to": to, "resource_classes": []string{}, "regions": []string{}, "providers": []string{}},
		{"name": "Domestic accelerator pilot (Tianfu)", "rate": "0.20", "domestic_rate": "0.60",
			"annual_cap_per_company": "5000000.00", "budget": "100000000.00", "valid_from": from, "valid_to": to,
			"resource_classes": []string{"gpu.910b-64g"}, "regions": []string{}, "providers": []string{approved[2]}},
	}
	for _, p := range programs {
		var pr map[string]any
		if err := regc.do("POST", "/api/v1/programs", p, &pr); err != nil {
			return err
		}
		res.Programs = append(res.Programs, pr)
	}
	grants := []struct {
		sme, prog int
		amount    string
	}{{0, 0, "50000.00"}, {1, 0, "20000.00"}, {2, 0, "100000.00"}, {0, 1, "30000.00"}}
	for _, g := range grants {
		var v map[string]any
		body := map[string]any{"program_id": res.Programs[g.prog]["id"], "holder_id": res.SMEs[g.sme].ID, "amount": g.amount}
		if err := regc.do("POST", "/api/v1/vouchers", body, &v); err != nil {
			return err
		}
		res.Vouchers = append(res.Vouchers, v)
	}
	if *out != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(*out, b, 0o600); err != nil {
			return err
		}
	}
	fmt.Printf("Seeded %d providers (%d approved), %d offers, %d SMEs, %d programmes, %d vouchers.\n\n",
		len(res.Providers), len(approved), len(res.Offers), len(res.SMEs), len(res.Programs), len(res.Vouchers))
	fmt.Printf("  %-10s %-36s %-28s %s\n", "role", "name", "id", "token")
	fmt.Printf("  %-10s %-36s %-28s %s\n", "regulator", reg.Name, reg.ID, reg.Token)
	for i, p := range res.Providers {
		status := "approved"
		if !demoProviders[i].approve {
			status = "pending"
		}
		fmt.Printf("  %-10s %-36s %-28s %s\n", "provider", p.Name+" ("+status+")", p.ID, p.Token)
	}
	for _, s := range res.SMEs {
		fmt.Printf("  %-10s %-36s %-28s %s\n", "sme", s.Name, s.ID, s.Token)
	}
	if *out != "" {
		fmt.Printf("\nAccounts and tokens saved to %s.\n", *out)
	}
	return nil
}

func nonNil(xs []string) []string {
	if xs == nil {
		return []string{}
	}
	return xs
}

func offers(args []string) error {
	fs := flag.NewFlagSet("offers", flag.ExitOnError)
	base := common(fs)
	class := fs.String("class", "", "resource class")
	region := fs.String("region", "", "region")
	_ = fs.Parse(args)
	c := &client{base: strings.TrimRight(*base, "/"), http: &http.Client{Timeout: 30 * time.Second}}
	var r struct {
		Offers []struct {
			ID            string `json:"id"`
			ResourceClass string `json:"resource_class"`
			Region        string `json:"region"`
			Price         string `json:"price"`
			UnitsFree     int64  `json:"units_free"`
		} `json:"offers"`
	}
	q := "/api/v1/offers?limit=500&resource_class=" + *class + "&region=" + *region
	if err := c.do("GET", q, nil, &r); err != nil {
		return err
	}
	for _, o := range r.Offers {
		fmt.Printf("%-26s %-16s %-9s %10s  free %d\n", o.ID, o.ResourceClass, o.Region, o.Price, o.UnitsFree)
	}
	return nil
}

func trades(args []string) error {
	fs := flag.NewFlagSet("trades", flag.ExitOnError)
	base := common(fs)
	token := fs.String("token", os.Getenv("BROKER_TOKEN"), "regulator token")
	_ = fs.Parse(args)
	if *token == "" {
		return errors.New("--token is required")
	}
	c := &client{base: strings.TrimRight(*base, "/"), token: *token, http: &http.Client{Timeout: 30 * time.Second}}
	req, _ := http.NewRequest("GET", c.base+"/api/v1/analytics/trades?format=csv&limit=1000", nil)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(os.Stdout, resp.Body)
	return err
}
