package composecheck

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRepository checks the docker-compose.yml and Dockerfile at the repository root.
func TestRepository(t *testing.T) {
	if err := Validate(filepath.Join("..", "..", "docker-compose.yml")); err != nil {
		t.Fatal(err)
	}
}

const goodCompose = `
services:
  redis:
    image: redis:7
    command: redis-server --appendonly yes
    volumes: [redis-data:/data]
    healthcheck: {test: ["CMD", "redis-cli", "ping"]}
  clickhouse:
    image: clickhouse/clickhouse-server:24.8
    volumes:
      - type: volume
        source: ch-data
        target: /var/lib/clickhouse
      - ./local.xml:/etc/clickhouse-server/config.d/local.xml:ro
    healthcheck: {test: "clickhouse-client --query 'SELECT 1'"}
  brokerd:
    build: .
    environment:
      - REDIS_URL=redis://redis:6379/0
      - CLICKHOUSE_URL=clickhouse://clickhouse:9000/market
    depends_on: [redis, clickhouse]
    ports: ["127.0.0.1:8080:8080/tcp", "9100", {target: 9200, published: "9200"}]
volumes:
  redis-data:
  ch-data:
`

const goodDockerfile = `FROM golang:1.26 AS build
RUN go build ./cmd/brokerd
FROM gcr.io/distroless/static-debian12:nonroot
USER nonroot:nonroot
`

func TestValidate(t *testing.T) {
	// edit replaces old with new in goodCompose.
	type edit struct{ old, new string }
	tests := []struct {
		name       string
		edits      []edit
		dockerfile string // replaces goodDockerfile when set
		want       string // substring of the error; "" means valid
	}{
		{name: "good"},
		{name: "missing service", edits: []edit{{"  clickhouse:\n    image", "  olap:\n    image"}}, want: `service "clickhouse" is missing`},
		{name: "no aof", edits: []edit{{"--appendonly yes", "--save 60 1"}}, want: "append-only"},
		{name: "undeclared volume", edits: []edit{{"  ch-data:\n", ""}}, want: `named volume "ch-data"`},
		{name: "unknown dependency", edits: []edit{{"[redis, clickhouse]", "[redis, clickhouse, kafka]"}}, want: `depends_on "kafka"`},
		{name: "missing dependency", edits: []edit{{"[redis, clickhouse]", "[redis]"}}, want: `depends_on lacks "clickhouse"`},
		{name: "bad port", edits: []edit{{`"9100"`, `"91000"`}}, want: "bad port"},
		{name: "bad protocol", edits: []edit{{"8080/tcp", "8080/sctp"}}, want: "protocol"},
		{name: "no 8080", edits: []edit{{"127.0.0.1:8080:8080/tcp", "8081:8081"}}, want: "8080 is not published"},
		{name: "no env", edits: []edit{{"      - REDIS_URL=redis://redis:6379/0\n", ""}}, want: "REDIS_URL is not set"},
		{name: "wrong host", edits: []edit{{"clickhouse://clickhouse:9000", "clickhouse://localhost:9000"}}, want: "CLICKHOUSE_URL"},
		{name: "healthy without healthcheck", edits: []edit{
			{"[redis, clickhouse]", "{redis: {condition: service_healthy}, clickhouse: {condition: service_started}}"},
			{`    healthcheck: {test: ["CMD", "redis-cli", "ping"]}` + "\n", ""},
		}, want: "has no healthcheck"},
		{name: "single stage", dockerfile: "FROM golang:1.26\nUSER 1000\n", want: "multi-stage"},
		{name: "root", dockerfile: "FROM golang:1.26 AS build\nUSER nobody\nFROM scratch\n", want: "runs as root"},
		{name: "explicit root", dockerfile: "FROM golang:1.26 AS build\nFROM scratch\nUSER 0:0\n", want: "runs as root"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			compose := goodCompose
			for _, e := range tt.edits {
				if !strings.Contains(compose, e.old) {
					t.Fatalf("edit: %q not in the compose file", e.old)
				}
				compose = strings.Replace(compose, e.old, e.new, 1)
			}
			dockerfile := goodDockerfile
			if tt.dockerfile != "" {
				dockerfile = tt.dockerfile
			}
			path := filepath.Join(dir, "docker-compose.yml")
			if err := os.WriteFile(path, []byte(compose), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
				t.Fatal(err)
			}
			err := Validate(path)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tt.want != "" && err == nil:
				t.Fatalf("Validate passed, want an error containing %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Fatalf("Validate: %v\nwant an error containing %q", err, tt.want)
			}
		})
	}
}

// TestBrokerdProfile checks brokerd's profile, which go build (and so the
// Dockerfile) uses for profile-guided optimisation: it must be a gzipped
// pprof profile naming the matching engine's hot path and the book
// updates, and the Docker build context must include it.
func TestBrokerdProfile(t *testing.T) {
	f, err := os.Open(filepath.Join("..", "..", "cmd", "brokerd", "default.pgo"))
	if err != nil {
		t.Fatalf("brokerd's profile: %v (scripts/pgo makes it)", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("default.pgo is not a gzipped pprof profile: %v", err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("default.pgo: %v", err)
	}
	for _, fn := range []string{
		"computebroker/matching.(*Scratch).scan",
		"computebroker/matching.(*Scratch).run",
		"computebroker/matching.(*Scratch).price",
		"computebroker/voucher.Rules.prepareTerms",
		"computebroker/matching.(*Book).Upsert",
	} {
		if !bytes.Contains(b, []byte(fn)) {
			t.Errorf("default.pgo does not name %s: regenerate it with scripts/pgo", fn)
		}
	}
	ignore, err := os.ReadFile(filepath.Join("..", "..", ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(ignore), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "!") {
			if ok, _ := filepath.Match(l, "default.pgo"); ok || strings.Contains(l, "pgo") {
				t.Errorf(".dockerignore line %q leaves brokerd's profile out of the image build", l)
			}
		}
	}
	df, err := os.ReadFile(filepath.Join("..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(df), "-pgo=off") {
		t.Error("the Dockerfile builds brokerd without its profile")
	}
}
