package broker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"computebroker/broker"
	"computebroker/frontend"
	"computebroker/internal/testsvc"
)

const adminToken = "test-admin-token"

// env is one marketplace under test: Redis and ClickHouse databases of its
// own and one or more brokerd serving them.
type env struct {
	t      *testing.T
	redis  string
	ch     string
	urls   []string
	client *http.Client
	// env overrides brokerd's environment for in-process starts.
	env map[string]string
}

// startInProcess serves a brokerd inside the test process until the test
// ends.
func startInProcess(t *testing.T, e *env) string {
	t.Helper()
	url, stop := startStoppable(t, e)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	return url
}

// startStoppable serves a brokerd in the test process that the test stops
// itself: stop cancels it and returns what Run returned. e.env overrides
// its environment.
func startStoppable(t *testing.T, e *env) (url string, stop func() error) {
	t.Helper()
	defaults := map[string]string{"BROKER_LISTEN": "127.0.0.1:0", "REDIS_URL": e.redis, "CLICKHOUSE_URL": e.ch,
		"BROKER_ADMIN_TOKEN": adminToken, "BROKER_VAR_DIR": t.TempDir(), "BROKER_RATE_LIMIT": "1000:5000"}
	cfg, err := broker.ConfigFromEnv(func(k string) string {
		if v, ok := e.env[k]; ok {
			return v
		}
		return defaults[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg.Frontend = frontend.FS() // as cmd/brokerd serves it
	m := broker.NewMain(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	select {
	case <-m.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("brokerd did not start: %v", err)
	case <-time.After(90 * time.Second):
		cancel()
		t.Fatal("brokerd did not start in 90s")
	}
	return "http://" + m.Addr(), func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			return fmt.Errorf("brokerd did not stop in 30s")
		}
	}
}

func newEnvClient() *http.Client { return &http.Client{Timeout: 30 * time.Second} }

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, redis: testsvc.Redis(t), ch: testsvc.ClickHouse(t), client: &http.Client{Timeout: 30 * time.Second}}
	e.urls = append(e.urls, startInProcess(t, e))
	return e
}

// newClusterEnv is newEnv on a Redis Cluster of its own.
func newClusterEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, redis: testsvc.RedisCluster(t), ch: testsvc.ClickHouse(t), client: &http.Client{Timeout: 30 * time.Second}}
	e.urls = append(e.urls, startInProcess(t, e))
	return e
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// brokerdBinary builds cmd/brokerd once per test process.
func brokerdBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "brokerd-test-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "brokerd")
		// Without brokerd's profile (cmd/brokerd/default.pgo): it changes
		// speed, not behaviour, and on a cold cache compiling every
		// dependency again with it adds about 100 s to the run.
		cmd := exec.Command("go", "build", "-pgo=off", "-o", binPath, "./cmd/brokerd")
		cmd.Dir = testsvc.RepoRoot()
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/brokerd: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// startProcess runs one more brokerd as its own process on e's stores.
func startProcess(t *testing.T, e *env, name string) string {
	t.Helper()
	bin := brokerdBinary(t)
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "BROKER_LISTEN="+addr, "REDIS_URL="+e.redis, "CLICKHOUSE_URL="+e.ch,
		"BROKER_ADMIN_TOKEN="+adminToken, "BROKER_VAR_DIR="+t.TempDir(), "BROKER_RATE_LIMIT=1000:5000",
		"BROKER_CONSUMER="+name)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("%s did not stop on SIGINT", name)
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("%s log:\n%s", name, tail(b, 4000))
		}
	})
	url := "http://" + addr
	deadline := time.Now().Add(90 * time.Second)
	for {
		resp, err := http.Get(url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return url
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("%s did not answer /healthz in 90s:\n%s", name, tail(b, 4000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*netTCPAddr).Port
}

// resp is a decoded answer.
type resp struct {
	Status int
	Body   map[string]any
	Raw    []byte
	Header http.Header
}

func (r resp) str(k string) string {
	s, _ := r.Body[k].(string)
	return s
}

func (r resp) num(k string) int64 {
	f, _ := r.Body[k].(float64)
	return int64(f)
}

func (r resp) errCode() string {
	e, _ := r.Body["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

// do sends a request with a token (may be empty) and a body that is a
// string (sent as is) or a value (sent as JSON).
func (e *env) do(url, method, path, token string, body any, headers ...string) resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewBufferString(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	r, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer r.Body.Close()
	raw, _ := io.ReadAll(r.Body)
	out := resp{Status: r.StatusCode, Raw: raw, Header: r.Header}
	if len(raw) > 0 && raw[0] == '{' {
		if err := json.Unmarshal(raw, &out.Body); err != nil {
			e.t.Fatalf("%s %s: bad JSON %q: %v", method, path, raw, err)
		}
	}
	return out
}

func (e *env) call(method, path, token string, body any, headers ...string) resp {
	e.t.Helper()
	return e.do(e.urls[0], method, path, token, body, headers...)
}

// must calls and fails the test unless the status is want.
func (e *env) must(want int, method, path, token string, body any, headers ...string) resp {
	e.t.Helper()
	r := e.call(method, path, token, body, headers...)
	if r.Status != want {
		e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.Status, want, r.Raw)
	}
	return r
}

type account struct{ id, token string }

func (e *env) account(role, name string, extra map[string]any) account {
	e.t.Helper()
	body := map[string]any{"role": role, "name": name}
	for k, v := range extra {
		body[k] = v
	}
	r := e.must(201, "POST", "/api/v1/accounts", adminToken, body)
	return account{id: r.str("id"), token: r.str("token")}
}
