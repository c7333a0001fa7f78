// Package composecheck validates the repository's docker-compose.yml and the
// Dockerfile it builds, without Docker: the services the project needs exist,
// Redis keeps an append-only file, brokerd is built from a multi-stage
// Dockerfile that runs as a non-root user, gets REDIS_URL and CLICKHOUSE_URL,
// and waits for healthy dependencies; every reference (depends_on, named
// volumes, ports) is well-formed. Its test runs with go test ./..., so CI
// checks the files on machines without Docker.
package composecheck

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

type composeFile struct {
	Services map[string]service `yaml:"services"`
	Volumes  map[string]any     `yaml:"volumes"`
}

type service struct {
	Image       string       `yaml:"image"`
	Build       yaml.Node    `yaml:"build"`       // "dir" or {context, dockerfile}
	Command     yaml.Node    `yaml:"command"`     // string or list
	Environment yaml.Node    `yaml:"environment"` // map or ["K=V"]
	DependsOn   yaml.Node    `yaml:"depends_on"`  // list or map of {condition}
	Ports       []yaml.Node  `yaml:"ports"`       // "[ip:][host:]container[/proto]" or {target, published}
	Volumes     []yaml.Node  `yaml:"volumes"`     // "src:dst[:mode]" or {type, source, target}
	Healthcheck *healthcheck `yaml:"healthcheck"`
}

type healthcheck struct {
	Test    yaml.Node `yaml:"test"`
	Disable bool      `yaml:"disable"`
}

// Validate reads the compose file at path and the Dockerfile its brokerd
// service builds, and returns every problem found, joined, or nil.
func Validate(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("composecheck: %w", err)
	}
	var cf composeFile
	if err := yaml.Unmarshal(data, &cf); err != nil {
		return fmt.Errorf("composecheck: parse %s: %w", path, err)
	}
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	for _, name := range []string{"redis", "clickhouse", "brokerd"} {
		if _, ok := cf.Services[name]; !ok {
			fail("service %q is missing", name)
		}
	}

	if redis, ok := cf.Services["redis"]; ok {
		cmd := strings.Join(stringList(&redis.Command), " ")
		if !regexp.MustCompile(`(^|\s)--appendonly\s+yes(\s|$)`).MatchString(cmd) {
			fail("redis: command %q does not enable the append-only file (--appendonly yes)", cmd)
		}
	}

	if b, ok := cf.Services["brokerd"]; ok {
		context, dockerfile, err := buildSpec(&b.Build)
		if err != nil {
			fail("brokerd: %v", err)
		} else {
			df := filepath.Join(filepath.Dir(path), context, dockerfile)
			if err := ValidateDockerfile(df); err != nil {
				fail("brokerd: %v", err)
			}
		}
		env, err := envMap(&b.Environment)
		if err != nil {
			fail("brokerd: environment: %v", err)
		}
		for key, want := range map[string]struct{ scheme, host string }{
			"REDIS_URL":      {"redis", "redis"},
			"CLICKHOUSE_URL": {"clickhouse", "clickhouse"},
		} {
			v := env[key]
			if v == "" {
				fail("brokerd: environment %s is not set", key)
				continue
			}
			u, err := url.Parse(v)
			if err != nil || u.Scheme != want.scheme || u.Hostname() != want.host {
				fail("brokerd: %s=%q, want %s://%s:PORT/…", key, v, want.scheme, want.host)
			}
		}
		deps, _, _ := dependsOn(&b.DependsOn)
		for _, need := range []string{"redis", "clickhouse"} {
			if !slices.Contains(deps, need) {
				fail("brokerd: depends_on lacks %q", need)
			}
		}
		if !publishes(b.Ports, 8080) {
			fail("brokerd: port 8080 is not published")
		}
	}

	for _, name := range sortedKeys(cf.Services) {
		s := cf.Services[name]
		if s.Image == "" && s.Build.Kind == 0 {
			fail("%s: neither image nor build", name)
		}
		deps, conditions, err := dependsOn(&s.DependsOn)
		if err != nil {
			fail("%s: depends_on: %v", name, err)
		}
		for _, d := range deps {
			target, ok := cf.Services[d]
			switch {
			case !ok:
				fail("%s: depends_on %q, which is not a service", name, d)
			case d == name:
				fail("%s: depends_on itself", name)
			case conditions[d] == "service_healthy" && (target.Healthcheck == nil || target.Healthcheck.Disable):
				fail("%s: waits for %q to be healthy, but it has no healthcheck", name, d)
			}
		}
		for _, v := range s.Volumes {
			vol, err := namedVolume(&v)
			if err != nil {
				fail("%s: volumes: %v", name, err)
			} else if vol != "" {
				if _, ok := cf.Volumes[vol]; !ok {
					fail("%s: named volume %q is not declared under volumes:", name, vol)
				}
			}
		}
		for _, p := range s.Ports {
			if _, err := portSpec(&p); err != nil {
				fail("%s: ports: %v", name, err)
			}
		}
		if h := s.Healthcheck; h != nil && !h.Disable && len(stringList(&h.Test)) == 0 {
			fail("%s: healthcheck has no test", name)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("composecheck: %s: %w", path, errors.Join(errs...))
	}
	return nil
}

// ValidateDockerfile checks that the Dockerfile at path is a multi-stage build
// (two FROM lines or more) whose final stage runs as a non-root USER.
func ValidateDockerfile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("dockerfile: %w", err)
	}
	froms := 0
	user := "" // USER of the current (finally: last) stage
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "FROM":
			froms++
			user = ""
		case "USER":
			if len(fields) > 1 {
				user = fields[1]
			}
		}
	}
	if froms < 2 {
		return fmt.Errorf("dockerfile %s: %d FROM line(s), want a multi-stage build", path, froms)
	}
	name, _, _ := strings.Cut(user, ":")
	if name == "" || name == "root" || name == "0" {
		return fmt.Errorf("dockerfile %s: the final stage runs as root (USER %q)", path, user)
	}
	return nil
}

// stringList reads a string (split on spaces) or a list of scalars.
func stringList(n *yaml.Node) []string {
	switch n.Kind {
	case yaml.ScalarNode:
		return strings.Fields(n.Value)
	case yaml.SequenceNode:
		var out []string
		for _, c := range n.Content {
			out = append(out, c.Value)
		}
		return out
	}
	return nil
}

func buildSpec(n *yaml.Node) (context, dockerfile string, err error) {
	switch n.Kind {
	case 0:
		return "", "", errors.New("no build section")
	case yaml.ScalarNode:
		context, dockerfile = n.Value, "Dockerfile"
	case yaml.MappingNode:
		var b struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
		}
		if err := n.Decode(&b); err != nil {
			return "", "", fmt.Errorf("build: %w", err)
		}
		context, dockerfile = b.Context, b.Dockerfile
		if dockerfile == "" {
			dockerfile = "Dockerfile"
		}
	default:
		return "", "", errors.New("build: want a path or a mapping")
	}
	if context == "" {
		return "", "", errors.New("build has no context")
	}
	return context, dockerfile, nil
}

func envMap(n *yaml.Node) (map[string]string, error) {
	env := map[string]string{}
	switch n.Kind {
	case 0:
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			env[n.Content[i].Value] = n.Content[i+1].Value
		}
	case yaml.SequenceNode:
		for _, c := range n.Content {
			k, v, _ := strings.Cut(c.Value, "=")
			env[k] = v
		}
	default:
		return nil, errors.New("want a mapping or a list of KEY=VALUE")
	}
	return env, nil
}

// dependsOn returns the services named and, for the long syntax, their conditions.
func dependsOn(n *yaml.Node) (names []string, conditions map[string]string, err error) {
	conditions = map[string]string{}
	switch n.Kind {
	case 0:
	case yaml.SequenceNode:
		for _, c := range n.Content {
			names = append(names, c.Value)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			name := n.Content[i].Value
			names = append(names, name)
			var spec struct {
				Condition string `yaml:"condition"`
			}
			if err := n.Content[i+1].Decode(&spec); err != nil {
				return nil, nil, fmt.Errorf("%s: %w", name, err)
			}
			switch spec.Condition {
			case "", "service_started", "service_healthy", "service_completed_successfully":
				conditions[name] = spec.Condition
			default:
				return nil, nil, fmt.Errorf("%s: unknown condition %q", name, spec.Condition)
			}
		}
	default:
		return nil, nil, errors.New("want a list or a mapping")
	}
	return names, conditions, nil
}

// namedVolume returns the named volume a service volume entry uses, or "" for
// bind mounts and anonymous volumes.
func namedVolume(n *yaml.Node) (string, error) {
	switch n.Kind {
	case yaml.ScalarNode:
		src, _, found := strings.Cut(n.Value, ":")
		if !found || src == "" {
			return "", nil // anonymous volume: just a container path
		}
		if strings.HasPrefix(src, "/") || strings.HasPrefix(src, ".") || strings.HasPrefix(src, "~") || strings.HasPrefix(src, "$") {
			return "", nil // bind mount
		}
		return src, nil
	case yaml.MappingNode:
		var v struct {
			Type   string `yaml:"type"`
			Source string `yaml:"source"`
		}
		if err := n.Decode(&v); err != nil {
			return "", err
		}
		if v.Type == "volume" {
			return v.Source, nil
		}
		return "", nil
	}
	return "", fmt.Errorf("line %d: want a string or a mapping", n.Line)
}

// portSpec parses a port entry and returns the container port (the first of a range).
func portSpec(n *yaml.Node) (int, error) {
	if n.Kind == yaml.MappingNode {
		var p struct {
			Target    int    `yaml:"target"`
			Published string `yaml:"published"`
			Protocol  string `yaml:"protocol"`
			HostIP    string `yaml:"host_ip"`
		}
		if err := n.Decode(&p); err != nil {
			return 0, err
		}
		if p.Target < 1 || p.Target > 65535 {
			return 0, fmt.Errorf("line %d: target %d out of range", n.Line, p.Target)
		}
		if p.Published != "" {
			if _, err := portRange(p.Published); err != nil {
				return 0, fmt.Errorf("line %d: published: %w", n.Line, err)
			}
		}
		if p.Protocol != "" && p.Protocol != "tcp" && p.Protocol != "udp" {
			return 0, fmt.Errorf("line %d: protocol %q", n.Line, p.Protocol)
		}
		if p.HostIP != "" && net.ParseIP(p.HostIP) == nil {
			return 0, fmt.Errorf("line %d: host_ip %q", n.Line, p.HostIP)
		}
		return p.Target, nil
	}
	if n.Kind != yaml.ScalarNode {
		return 0, fmt.Errorf("line %d: want a string or a mapping", n.Line)
	}
	spec := strings.TrimSpace(n.Value) // a bare 8080 is an int node; its Value is still "8080"
	bad := func(why string) (int, error) { return 0, fmt.Errorf("%q: %s", n.Value, why) }
	rest, proto, hasProto := strings.Cut(spec, "/")
	if hasProto && proto != "tcp" && proto != "udp" {
		return bad("protocol must be tcp or udp")
	}
	if strings.HasPrefix(rest, "[") { // [ipv6]:host:container
		end := strings.Index(rest, "]:")
		if end < 0 || net.ParseIP(rest[1:end]) == nil {
			return bad("bad IPv6 address")
		}
		rest = rest[end+2:]
		if strings.Count(rest, ":") != 1 {
			return bad("want [ip]:host:container")
		}
	}
	parts := strings.Split(rest, ":")
	switch len(parts) {
	case 1, 2:
	case 3:
		if net.ParseIP(parts[0]) == nil {
			return bad("bad host IP")
		}
		parts = parts[1:]
	default:
		return bad("want [ip:][host:]container[/protocol]")
	}
	var container int
	for i, p := range parts {
		if i == 0 && len(parts) == 2 && p == "" {
			continue // ":80" lets Docker pick the host port
		}
		first, err := portRange(p)
		if err != nil {
			return bad(err.Error())
		}
		container = first
	}
	return container, nil
}

// portRange parses "N" or "N-M" and returns N.
func portRange(s string) (int, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	a, err := strconv.Atoi(lo)
	if err != nil || a < 1 || a > 65535 {
		return 0, fmt.Errorf("bad port %q", s)
	}
	if isRange {
		b, err := strconv.Atoi(hi)
		if err != nil || b < a || b > 65535 {
			return 0, fmt.Errorf("bad port range %q", s)
		}
	}
	return a, nil
}

func publishes(ports []yaml.Node, container int) bool {
	for i := range ports {
		if p, err := portSpec(&ports[i]); err == nil && p == container {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
