package broker

import (
	"encoding/json"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// openAPIDoc is the part of an OpenAPI document the tests look at.
type openAPIDoc struct {
	OpenAPI string                                `json:"openapi"`
	Paths   map[string]map[string]json.RawMessage `json:"paths"`
}

var openAPIMethods = map[string]bool{
	"get": true, "put": true, "post": true, "delete": true, "options": true, "head": true, "patch": true, "trace": true,
}

var fiberParam = regexp.MustCompile(`:([A-Za-z0-9_]+)`)

// openAPIPath turns a fiber route path (/offers/:id) into an OpenAPI one
// (/offers/{id}).
func openAPIPath(p string) string {
	return fiberParam.ReplaceAllString(p, "{$1}")
}

func loadOpenAPI(t *testing.T) openAPIDoc {
	t.Helper()
	var doc openAPIDoc
	if err := json.Unmarshal(OpenAPI, &doc); err != nil {
		t.Fatalf("openapi.json is not valid JSON: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.0.") {
		t.Fatalf("openapi = %q, want 3.0.x", doc.OpenAPI)
	}
	if len(doc.Paths) == 0 {
		t.Fatal("openapi.json documents no paths")
	}
	return doc
}

// registeredRoutes lists "METHOD /path" of every route NewApp registers,
// the WebSocket gateway's included (as brokerd mounts it), without
// HEAD/OPTIONS, middleware (Use) entries and the catch-all.
func registeredRoutes(t *testing.T) map[string]bool {
	t.Helper()
	svc := NewService(Config{}, nil, nil, nil, nil)
	app := NewApp(svc, ServerConfig{OpenAPI: OpenAPI, Extra: NewStreams(svc, nil, StreamConfig{}).Mount})
	out := map[string]bool{}
	for _, r := range app.GetRoutes(true) {
		if r.Method == http.MethodHead || r.Method == http.MethodOptions || r.Method == "CONNECT" || r.Method == "TRACE" {
			continue
		}
		if r.Path == "/" || strings.Contains(r.Path, "*") {
			continue
		}
		out[r.Method+" "+openAPIPath(r.Path)] = true
	}
	if len(out) == 0 {
		t.Fatal("NewApp registered no routes")
	}
	return out
}

func documentedRoutes(doc openAPIDoc) map[string]bool {
	out := map[string]bool{}
	for p, item := range doc.Paths {
		for m := range item {
			if openAPIMethods[m] {
				out[strings.ToUpper(m)+" "+p] = true
			}
		}
	}
	return out
}

func openAPISorted(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	doc := loadOpenAPI(t)
	documented := documentedRoutes(doc)
	registered := registeredRoutes(t)
	for _, r := range openAPISorted(registered) {
		path := r[strings.IndexByte(r, ' ')+1:]
		if !strings.HasPrefix(path, "/api/v1/") {
			continue
		}
		if !documented[r] {
			t.Errorf("route %s is registered but not in openapi.json", r)
		}
	}
	for _, r := range openAPISorted(documented) {
		if registered[r] {
			continue
		}
		t.Errorf("openapi.json documents %s, which NewApp does not register", r)
	}
}

func TestOpenAPIPathParameters(t *testing.T) {
	doc := loadOpenAPI(t)
	type param struct {
		Ref      string `json:"$ref"`
		Name     string `json:"name"`
		In       string `json:"in"`
		Required bool   `json:"required"`
	}
	var full struct {
		Components struct {
			Parameters map[string]param `json:"parameters"`
		} `json:"components"`
	}
	if err := json.Unmarshal(OpenAPI, &full); err != nil {
		t.Fatal(err)
	}
	resolve := func(p param) param {
		if name, ok := strings.CutPrefix(p.Ref, "#/components/parameters/"); ok {
			return full.Components.Parameters[name]
		}
		return p
	}
	braces := regexp.MustCompile(`\{([^}]+)\}`)
	for path, item := range doc.Paths {
		want := map[string]bool{}
		for _, m := range braces.FindAllStringSubmatch(path, -1) {
			want[m[1]] = true
		}
		var common []param
		if raw, ok := item["parameters"]; ok {
			if err := json.Unmarshal(raw, &common); err != nil {
				t.Fatalf("%s parameters: %v", path, err)
			}
		}
		for m, raw := range item {
			if !openAPIMethods[m] {
				continue
			}
			var o struct {
				Parameters []param `json:"parameters"`
			}
			if err := json.Unmarshal(raw, &o); err != nil {
				t.Fatalf("%s %s: %v", m, path, err)
			}
			got := map[string]bool{}
			for _, p := range append(append([]param{}, common...), o.Parameters...) {
				p = resolve(p)
				if p.In == "path" {
					if !p.Required {
						t.Errorf("%s %s: path parameter %s must be required", m, path, p.Name)
					}
					got[p.Name] = true
				}
			}
			for n := range want {
				if !got[n] {
					t.Errorf("%s %s: path parameter {%s} is not declared", m, path, n)
				}
			}
			for n := range got {
				if !want[n] {
					t.Errorf("%s %s: declares path parameter %s that is not in the path", m, path, n)
				}
			}
		}
	}
}

// TestOpenAPIRefsResolve checks that every $ref is a local JSON pointer to
// something the document holds.
func TestOpenAPIRefsResolve(t *testing.T) {
	var root any
	if err := json.Unmarshal(OpenAPI, &root); err != nil {
		t.Fatal(err)
	}
	n := 0
	var walk func(v any, at string)
	walk = func(v any, at string) {
		switch v := v.(type) {
		case map[string]any:
			if r, ok := v["$ref"]; ok {
				n++
				s, _ := r.(string)
				if _, err := jsonPointer(root, s); err != "" {
					t.Errorf("%s: $ref %q: %s", at, s, err)
				}
			}
			for k, x := range v {
				walk(x, at+"/"+k)
			}
		case []any:
			for i, x := range v {
				walk(x, at+"/"+itoa64(int64(i)))
			}
		}
	}
	walk(root, "#")
	if n == 0 {
		t.Error("openapi.json has no $ref at all")
	}
}

func jsonPointer(root any, ref string) (any, string) {
	rest, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil, "not a local reference"
	}
	cur := root
	for _, tok := range strings.Split(rest, "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, "cannot descend into " + tok
		}
		if cur, ok = m[tok]; !ok {
			return nil, "no " + tok
		}
	}
	return cur, ""
}

// TestOpenAPIRequestBodiesClosed checks that request bodies reject unknown
// fields as the server does.
func TestOpenAPIRequestBodiesClosed(t *testing.T) {
	var root map[string]any
	if err := json.Unmarshal(OpenAPI, &root); err != nil {
		t.Fatal(err)
	}
	paths, _ := root["paths"].(map[string]any)
	for path, item := range paths {
		for m, o := range item.(map[string]any) {
			if !openAPIMethods[m] {
				continue
			}
			rb, ok := o.(map[string]any)["requestBody"].(map[string]any)
			if !ok {
				continue
			}
			schema, ok := rb["content"].(map[string]any)["application/json"].(map[string]any)["schema"]
			if !ok {
				t.Errorf("%s %s: request body has no application/json schema", m, path)
				continue
			}
			if ref, ok := schema.(map[string]any)["$ref"].(string); ok {
				schema, _ = jsonPointer(root, ref)
			}
			s, _ := schema.(map[string]any)
			if s["additionalProperties"] != false {
				t.Errorf("%s %s: request body schema must set additionalProperties: false", m, path)
			}
		}
	}
}
