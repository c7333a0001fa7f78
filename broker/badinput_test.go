package broker_test

import (
	"strings"
	"testing"
)

// TestBadInput: every malformed or unauthorised request is answered with the
// error JSON and status of API.md, and changes nothing.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "P", nil)
	q := e.account("provider", "Q", nil)
	s := e.account("sme", "S", nil)
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	off := e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.h100-80g", "cn-east", 8, "21.50")).str("id")
	prog := e.must(201, "POST", "/api/v1/programs", reg.token, programBody("P", "0.30", nil)).str("id")
	e.must(201, "POST", "/api/v1/vouchers", reg.token, map[string]any{"program_id": prog, "holder_id": s.id, "amount": "100.00"})

	snapshot := func() string {
		return string(e.must(200, "GET", "/api/v1/offers", "", nil).Raw) +
			string(e.must(200, "GET", "/api/v1/vouchers", reg.token, nil).Raw) +
			string(e.must(200, "GET", "/api/v1/orders", s.token, nil).Raw) +
			string(e.must(200, "GET", "/api/v1/providers", reg.token, nil).Raw)
	}
	before := snapshot()

	offer := func(field string, v any) string {
		b := `{"resource_class":"gpu.h100-80g","region":"cn-east","units":8,"price":"21.50","max_hours":720}`
		if field == "" {
			return b
		}
		var val string
		switch x := v.(type) {
		case string:
			val = x
		}
		// Replace the field's value textually to send exactly what we mean.
		for _, f := range []string{`"units":8`, `"price":"21.50"`, `"max_hours":720`, `"resource_class":"gpu.h100-80g"`, `"region":"cn-east"`} {
			if strings.HasPrefix(f, `"`+field+`"`) {
				return strings.Replace(b, f, `"`+field+`":`+val, 1)
			}
		}
		return strings.TrimSuffix(b, "}") + `,"` + field + `":` + val + `}`
	}
	job := `{"resource_class":"gpu.h100-80g","units":1,"hours":1}`
	idem := []string{"Idempotency-Key", "bad-1"}

	cases := []struct {
		name, method, path, token, body string
		headers                         []string
		status                          int
		code                            string
	}{
		{"malformed JSON", "POST", "/api/v1/offers", p.token, `{"resource_class":`, nil, 400, "invalid_argument"},
		{"not an object", "POST", "/api/v1/offers", p.token, `[1,2]`, nil, 400, "invalid_argument"},
		{"empty body", "POST", "/api/v1/offers", p.token, ``, nil, 400, "invalid_argument"},
		{"trailing data", "POST", "/api/v1/offers", p.token, offer("", nil) + `{}`, nil, 400, "invalid_argument"},
		{"unknown field", "POST", "/api/v1/offers", p.token, offer("colour", `"red"`), nil, 400, "invalid_argument"},
		{"missing token", "POST", "/api/v1/offers", "", offer("", nil), nil, 401, "unauthenticated"},
		{"wrong token", "POST", "/api/v1/offers", "cbk_not_a_token", offer("", nil), nil, 401, "unauthenticated"},
		{"SME publishes", "POST", "/api/v1/offers", s.token, offer("", nil), nil, 403, "forbidden"},
		{"another provider's offer", "PATCH", "/api/v1/offers/" + off, q.token, `{"price":"1.00"}`, nil, 403, "forbidden"},
		{"delete another's offer", "DELETE", "/api/v1/offers/" + off, q.token, ``, nil, 403, "forbidden"},
		{"unknown offer", "PATCH", "/api/v1/offers/off_nope", p.token, `{"price":"1.00"}`, nil, 404, "not_found"},
		{"empty patch", "PATCH", "/api/v1/offers/" + off, p.token, `{}`, nil, 400, "invalid_argument"},
		{"zero price", "POST", "/api/v1/offers", p.token, offer("price", `"0"`), nil, 400, "invalid_argument"},
		{"negative price", "POST", "/api/v1/offers", p.token, offer("price", `"-1.00"`), nil, 400, "invalid_argument"},
		{"non-numeric price", "POST", "/api/v1/offers", p.token, offer("price", `"abc"`), nil, 400, "invalid_argument"},
		{"over-precise price", "POST", "/api/v1/offers", p.token, offer("price", `"21.12345"`), nil, 400, "invalid_argument"},
		{"price as number", "POST", "/api/v1/offers", p.token, offer("price", `21.5`), nil, 400, "invalid_argument"},
		{"exponent price", "POST", "/api/v1/offers", p.token, offer("price", `"1e3"`), nil, 400, "invalid_argument"},
		{"absurd price", "POST", "/api/v1/offers", p.token, offer("price", `"99999999999999999999"`), nil, 400, "invalid_argument"},
		{"patch bad price", "PATCH", "/api/v1/offers/" + off, p.token, `{"price":"-3"}`, nil, 400, "invalid_argument"},
		{"zero units", "POST", "/api/v1/offers", p.token, offer("units", `0`), nil, 400, "invalid_argument"},
		{"negative units", "POST", "/api/v1/offers", p.token, offer("units", `-4`), nil, 400, "invalid_argument"},
		{"fractional units", "POST", "/api/v1/offers", p.token, offer("units", `1.5`), nil, 400, "invalid_argument"},
		{"absurd units", "POST", "/api/v1/offers", p.token, offer("units", `1e30`), nil, 400, "invalid_argument"},
		{"huge units", "POST", "/api/v1/offers", p.token, offer("units", `99999999999`), nil, 400, "invalid_argument"},
		{"units as string", "POST", "/api/v1/offers", p.token, offer("units", `"8"`), nil, 400, "invalid_argument"},
		{"patch zero units", "PATCH", "/api/v1/offers/" + off, p.token, `{"units":0}`, nil, 400, "invalid_argument"},
		{"negative hours", "POST", "/api/v1/offers", p.token, offer("max_hours", `-1`), nil, 400, "invalid_argument"},
		{"unknown class", "POST", "/api/v1/offers", p.token, offer("resource_class", `"gpu.b200"`), nil, 400, "invalid_argument"},
		{"unknown region", "POST", "/api/v1/offers", p.token, offer("region", `"eu-west"`), nil, 400, "invalid_argument"},
		{"order without key", "POST", "/api/v1/orders", s.token, job, nil, 400, "invalid_argument"},
		{"order by provider", "POST", "/api/v1/orders", p.token, job, idem, 403, "forbidden"},
		{"order zero units", "POST", "/api/v1/orders", s.token, `{"resource_class":"gpu.h100-80g","units":0,"hours":1}`, idem, 400, "invalid_argument"},
		{"order unknown region", "POST", "/api/v1/orders", s.token, `{"resource_class":"gpu.h100-80g","regions":["mars"],"units":1,"hours":1}`, idem, 400, "invalid_argument"},
		{"order bad max price", "POST", "/api/v1/orders", s.token, `{"resource_class":"gpu.h100-80g","units":1,"hours":1,"max_price":"0.00001"}`, idem, 400, "invalid_argument"},
		{"order bad tif", "POST", "/api/v1/orders", s.token, `{"resource_class":"gpu.h100-80g","units":1,"hours":1,"time_in_force":"fok"}`, idem, 400, "invalid_argument"},
		{"order unknown field", "POST", "/api/v1/orders", s.token, `{"resource_class":"gpu.h100-80g","units":1,"hours":1,"unit":1}`, idem, 400, "invalid_argument"},
		{"quote huge", "POST", "/api/v1/quotes", s.token, `{"resource_class":"gpu.h100-80g","units":1000000,"hours":87600}`, nil, 400, "invalid_argument"},
		{"quote no class", "POST", "/api/v1/quotes", s.token, `{"units":1,"hours":1}`, nil, 400, "invalid_argument"},
		{"program rate too high", "POST", "/api/v1/programs", reg.token, `{"name":"x","rate":"0.61","annual_cap_per_company":"1.00","budget":"1.00","valid_from":"2026-01-01T00:00:00Z","valid_to":"2027-01-01T00:00:00Z"}`, nil, 400, "invalid_argument"},
		{"program bad time", "POST", "/api/v1/programs", reg.token, `{"name":"x","rate":"0.30","annual_cap_per_company":"1.00","budget":"1.00","valid_from":"yesterday","valid_to":"2027-01-01T00:00:00Z"}`, nil, 400, "invalid_argument"},
		{"program by SME", "POST", "/api/v1/programs", s.token, `{"name":"x"}`, nil, 403, "forbidden"},
		{"voucher negative", "POST", "/api/v1/vouchers", reg.token, `{"program_id":"` + prog + `","holder_id":"` + s.id + `","amount":"-5"}`, nil, 400, "invalid_argument"},
		{"voucher to provider", "POST", "/api/v1/vouchers", reg.token, `{"program_id":"` + prog + `","holder_id":"` + p.id + `","amount":"5.00"}`, nil, 400, "invalid_argument"},
		{"voucher unknown program", "POST", "/api/v1/vouchers", reg.token, `{"program_id":"prg_nope","holder_id":"` + s.id + `","amount":"5.00"}`, nil, 400, "invalid_argument"},
		{"account bad role", "POST", "/api/v1/accounts", adminToken, `{"role":"king","name":"x"}`, nil, 400, "invalid_argument"},
		{"account by SME", "POST", "/api/v1/accounts", s.token, `{"role":"sme","name":"x"}`, nil, 403, "forbidden"},
		{"approve by provider", "POST", "/api/v1/providers/" + q.id + "/approve", p.token, ``, nil, 403, "forbidden"},
		{"approve unknown", "POST", "/api/v1/providers/prv_nope/approve", reg.token, ``, nil, 404, "not_found"},
		{"approve an SME", "POST", "/api/v1/providers/" + s.id + "/approve", reg.token, ``, nil, 400, "invalid_argument"},
		{"list bad limit", "GET", "/api/v1/offers?limit=0", "", ``, nil, 400, "invalid_argument"},
		{"list bad class", "GET", "/api/v1/offers?resource_class=nope", "", ``, nil, 400, "invalid_argument"},
		{"list bad max price", "GET", "/api/v1/offers?max_price=abc", "", ``, nil, 400, "invalid_argument"},
		{"trades bad format", "GET", "/api/v1/analytics/trades?format=xml", reg.token, ``, nil, 400, "invalid_argument"},
		{"trades bad cursor", "GET", "/api/v1/analytics/trades?cursor=not-a-cursor", reg.token, ``, nil, 400, "invalid_argument"},
		{"trades bad time", "GET", "/api/v1/analytics/trades?from=monday", reg.token, ``, nil, 400, "invalid_argument"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var body any
			if c.body != "" {
				body = c.body
			}
			r := e.call(c.method, c.path, c.token, body, c.headers...)
			if r.Status != c.status || r.errCode() != c.code {
				t.Fatalf("got %d %s, want %d %s", r.Status, r.Raw, c.status, c.code)
			}
			msg, _ := r.Body["error"].(map[string]any)["message"].(string)
			if msg == "" {
				t.Fatalf("error without message: %s", r.Raw)
			}
		})
	}
	if after := snapshot(); after != before {
		t.Fatalf("rejected requests changed state:\nbefore %s\nafter  %s", before, after)
	}
}
