package frontend

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"path"
	"regexp"
	"strings"
	"testing"
)

var pages = []string{"index.html", "provider.html", "regulator.html"}

func TestFSServesPages(t *testing.T) {
	f := FS()
	for _, name := range append(append([]string{}, pages...), "app.css", "api.js") {
		b, err := fs.ReadFile(f, name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if len(strings.TrimSpace(string(b))) == 0 {
			t.Errorf("%s is empty", name)
		}
	}

	srv := httptest.NewServer(http.FileServer(http.FS(f)))
	defer srv.Close()
	for _, p := range []string{"/", "/provider.html", "/regulator.html", "/app.css", "/api.js"} {
		res, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || len(body) == 0 {
			t.Errorf("GET %s: %d, %d bytes", p, res.StatusCode, len(body))
		}
		if p == "/" && !strings.Contains(string(body), "<html") {
			t.Errorf("GET / does not serve index.html")
		}
	}
}

var (
	attrRef     = regexp.MustCompile(`(?is)\b(?:href|src)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))`)
	jsImport    = regexp.MustCompile(`(?m)(?:\bimport\b[^;'"]*?\bfrom\s*|\bimport\s*\(?\s*)["']([^"']+)["']`)
	cssRef      = regexp.MustCompile(`(?i)(?:url\(\s*["']?([^"')]+)|@import\s+["']([^"']+))`)
	externalURL = regexp.MustCompile(`(?i)(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)
	schemeRef   = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
)

// localTarget resolves a reference made in file from to a path in the FS;
// ok is false for references that are not to files (fragments, data:,
// mailto:, …).
func localTarget(from, ref string) (string, bool) {
	ref = strings.TrimSpace(ref)
	if i := strings.IndexAny(ref, "?#"); i >= 0 {
		ref = ref[:i]
	}
	if ref == "" || schemeRef.MatchString(ref) || strings.HasPrefix(ref, "//") {
		return "", false
	}
	if strings.HasPrefix(ref, "/") {
		return path.Clean(strings.TrimPrefix(ref, "/")), true
	}
	return path.Clean(path.Join(path.Dir(from), ref)), true
}

func refsIn(name string, text string) []string {
	var out []string
	add := func(ms [][]string) {
		for _, m := range ms {
			for _, g := range m[1:] {
				if g != "" {
					out = append(out, g)
					break
				}
			}
		}
	}
	switch path.Ext(name) {
	case ".html":
		add(attrRef.FindAllStringSubmatch(text, -1))
	case ".js":
		add(jsImport.FindAllStringSubmatch(text, -1))
	case ".css":
		add(cssRef.FindAllStringSubmatch(text, -1))
	}
	return out
}

func TestLocalReferencesExist(t *testing.T) {
	f := FS()
	checked := 0
	err := fs.WalkDir(f, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(f, name)
		if err != nil {
			return err
		}
		for _, ref := range refsIn(name, string(b)) {
			target, ok := localTarget(name, ref)
			if !ok {
				continue
			}
			checked++
			if strings.HasPrefix(target, "..") {
				t.Errorf("%s: %q points outside the pages", name, ref)
				continue
			}
			if st, err := fs.Stat(f, target); err != nil || st.IsDir() {
				t.Errorf("%s: %q points to %s, which is not a file in FS()", name, ref, target)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked == 0 {
		t.Fatal("found no local references at all")
	}
}

func TestPagesAreSelfContained(t *testing.T) {
	f := FS()
	err := fs.WalkDir(f, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		switch path.Ext(name) {
		case ".html", ".css", ".js":
		default:
			return nil // images may carry XML namespace URIs, which are names, not fetches
		}
		b, err := fs.ReadFile(f, name)
		if err != nil {
			return err
		}
		for _, m := range externalURL.FindAllString(string(b), -1) {
			t.Errorf("%s references an external URL %q: serve everything locally", name, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pages {
		b, _ := fs.ReadFile(f, p)
		for _, m := range attrRef.FindAllStringSubmatch(string(b), -1) {
			ref := m[1] + m[2] + m[3]
			if strings.HasPrefix(ref, "//") || strings.HasPrefix(strings.ToLower(ref), "http:") || strings.HasPrefix(strings.ToLower(ref), "https:") {
				t.Errorf("%s references external %q", p, ref)
			}
		}
	}
}

func TestPagesLinkEachOther(t *testing.T) {
	for _, p := range pages {
		b, err := fs.ReadFile(FS(), p)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for _, q := range append(append([]string{}, pages...), "app.css") {
			if !strings.Contains(s, `href="`+q+`"`) {
				t.Errorf("%s does not link %s", p, q)
			}
		}
		if !strings.Contains(s, `lang="`) || !strings.Contains(s, `name="viewport"`) {
			t.Errorf("%s lacks lang or viewport", p)
		}
	}
}
