package broker_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// browser starts Debian's chromium headless (scripts/test installs it) and
// returns a chromedp context bounded by timeout. It fails, never skips, when
// chromium is missing.
func browser(t *testing.T, timeout time.Duration) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is needed for the browser tests (scripts/services install chromium)")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.WindowSize(1280, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, timeout)
	t.Cleanup(func() { cancelTimeout(); cancelCtx(); cancelAlloc() })
	return ctx
}

// page is a page open in the browser, signed in with a role's token.
type page struct {
	t   *testing.T
	ctx context.Context
}

// openPage opens url with token stored for role, as the pages keep it.
func openPage(t *testing.T, url, role, token string) *page {
	t.Helper()
	p := &page{t: t, ctx: browser(t, 60*time.Second)}
	if err := chromedp.Do(p.ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	p.eval(`localStorage.setItem("computebroker.token." + ` + jsString(role) + `, ` + jsString(token) + `); "ok"`)
	if err := chromedp.Do(p.ctx, chromedp.Reload()); err != nil {
		t.Fatalf("reload %s: %v", url, err)
	}
	return p
}

// eval runs a JavaScript expression that gives a string.
func (p *page) eval(js string) string {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](js))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

// waitFor polls a JavaScript predicate; on failure it shows the page's text.
func (p *page) waitFor(what, predicate string, within time.Duration) {
	p.t.Helper()
	if _, err := chromedp.Run(p.ctx, chromedp.Poll[bool](predicate, chromedp.WithPollingTimeout(within))); err != nil {
		p.t.Fatalf("%s: %v\npage: %s", what, err, p.eval(`(document.querySelector("main") || document.body).innerText.slice(0, 2000)`))
	}
}

// TestStorefrontInBrowser drives the SME storefront in a real browser: the
// live offers table shows the market and follows a price change over the
// market stream, and an order placed from the page is filled with the
// voucher applied.
func TestStorefrontInBrowser(t *testing.T) {
	e := newEnv(t)
	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "Yangtze", nil)
	s := e.account("sme", "Lingxi", nil)
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	off := e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.h100-80g", "cn-east", 8, "21.50")).str("id")
	prog := e.must(201, "POST", "/api/v1/programs", reg.token, programBody("P", "0.30", nil)).str("id")
	e.must(201, "POST", "/api/v1/vouchers", reg.token, map[string]any{"program_id": prog, "holder_id": s.id, "amount": "1000.00"})

	pg := openPage(t, e.urls[0]+"/", "sme", s.token)
	pg.waitFor("the live offers table", `document.querySelectorAll("#offers tr").length > 0 &&
		document.querySelector("#feed-state").textContent.toLowerCase().includes("live")`, 10*time.Second)
	if table := pg.eval(`document.querySelector("#offers").textContent`); !strings.Contains(table, "21.50") {
		t.Fatalf("offers table: %q", table)
	}

	// A price change reaches the open page over the market stream.
	e.must(200, "PATCH", "/api/v1/offers/"+off, p.token, map[string]any{"price": "20.75"})
	pg.waitFor("the new price in the live table", `document.querySelector("#offers").textContent.includes("20.75")`, 5*time.Second)

	// Order from the page: 2 GPUs for 10 hours at 20.75 = 415.00, 30% off.
	pg.waitFor("the class list", `document.querySelector('#job select[name=resource_class]').options.length > 0`, 5*time.Second)
	pg.eval(`(() => {
		const f = document.querySelector("#job");
		f.querySelector("select[name=resource_class]").value = "gpu.h100-80g";
		f.querySelector("input[name=units]").value = "2";
		f.querySelector("input[name=hours]").value = "10";
		f.querySelector("button[value=order]").click();
		return "ok";
	})()`)
	pg.waitFor("the filled order on the page", `(t => t.includes("filled") && t.includes("you pay 290.50"))(document.querySelector("#job-msg").textContent)`, 10*time.Second)
	orders := e.must(200, "GET", "/api/v1/orders", s.token, nil).Body["orders"].([]any)
	if len(orders) != 1 {
		t.Fatalf("%d orders after ordering from the page", len(orders))
	}
	o := orders[0].(map[string]any)
	if o["status"] != "filled" || o["gross"] != "415.00" || o["discount"] != "124.50" || o["net"] != "290.50" {
		t.Fatalf("order placed from the page: %v", o)
	}
}

func jsString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// TestRegulatorDashboardInBrowser drives the regulator's page: a pending
// provider is approved with its button, and after a trade the analytics
// panels show the market (one provider: HHI 10000, highly concentrated).
func TestRegulatorDashboardInBrowser(t *testing.T) {
	e := newEnv(t)
	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "Pending Compute", nil)
	s := e.account("sme", "S", nil)

	pg := openPage(t, e.urls[0]+"/regulator.html", "regulator", reg.token)
	row := `[...document.querySelectorAll("#providers tr")].find(r => r.textContent.includes(` + jsString(p.id) + `))`
	pg.waitFor("the pending provider listed", `(r => !!r && r.textContent.includes("pending"))(`+row+`)`, 10*time.Second)
	pg.eval(`(r => { [...r.querySelectorAll("button")].find(b => b.textContent.trim() === "Approve").click(); return "ok"; })(` + row + `)`)
	pg.waitFor("the provider shown approved", `(r => !!r && r.textContent.includes("approved"))(`+row+`)`, 10*time.Second)
	if got := e.must(200, "GET", "/api/v1/providers", reg.token, nil).Body["providers"].([]any)[0].(map[string]any)["status"]; got != "approved" {
		t.Fatalf("after clicking Approve the provider is %v", got)
	}

	// A trade with a voucher, then the analytics panels.
	small := programBody("Tiny pilot", "0.20", []string{})
	small["budget"] = "100.00"
	prog := e.must(201, "POST", "/api/v1/programs", reg.token, small).str("id")
	e.must(201, "POST", "/api/v1/vouchers", reg.token, map[string]any{
		"program_id": prog, "holder_id": s.id, "amount": "100.00", "expires_at": "2029-06-30T00:00:00Z"})
	e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.910b-64g", "cn-west", 8, "13.00"))
	e.must(201, "POST", "/api/v1/orders", s.token, map[string]any{"resource_class": "gpu.910b-64g", "units": 2, "hours": 5}, "Idempotency-Key", "k")
	e.waitTrades(reg.token, 1)
	pg.eval(`document.querySelector("#analytics-filters").requestSubmit(); "ok"`)
	pg.waitFor("HHI of a one-provider market", `document.querySelector("#conc-hhi").textContent.trim() === "10000.00" &&
		document.querySelector("#conc-level").textContent.includes("highly concentrated")`, 10*time.Second)
	pg.waitFor("the price index row", `document.querySelector("#pi-rows").textContent.includes("13.0000")`, 10*time.Second)
	// 8 units listed, 2 leased: 25 %, 10 unit-hours sold.
	pg.waitFor("the capacity row", `(t => t.includes("gpu.910b-64g · cn-west") && t.includes("25.00 %") && t.includes("10"))(document.querySelector("#cap-rows").textContent)`, 10*time.Second)
	// 26.00 of 100.00 paid in 30 days: 74.00 left lasts 85.4 days, before the programme ends.
	pg.waitFor("the budget row", `(t => t.includes("Tiny pilot") && t.includes("74.00") && t.includes("(85.4 days)") && t.includes("before its end"))(document.querySelector("#budget-rows").textContent)`, 10*time.Second)
}
