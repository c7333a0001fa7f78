package broker

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"computebroker/market"
)

// Metrics are the broker's Prometheus series.
type Metrics struct {
	Registry *prometheus.Registry
	requests *prometheus.HistogramVec
	orders   *prometheus.CounterVec
}

// NewMetrics registers the broker's series (and the Go and process
// collectors) on reg; nil means a new registry.
func NewMetrics(reg *prometheus.Registry) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Metrics{
		Registry: reg,
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "broker_http_request_duration_seconds",
			Help:    "HTTP request latency by route, method and status.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route", "method", "status"}),
		orders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "broker_orders_total",
			Help: "Orders by outcome (filled, replayed, no_match, conflict, invalid_argument, unavailable, …).",
		}, []string{"outcome"}),
	}
	reg.MustRegister(m.requests, m.orders)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// RegisterGauge adds a gauge computed at scrape time, such as the history lag.
func (m *Metrics) RegisterGauge(name, help string, f func() float64) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

// RegisterCounter adds a counter read at scrape time from a value that only
// grows (a *_total).
func (m *Metrics) RegisterCounter(name, help string, f func() float64) {
	m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
}

func (m *Metrics) observe(route, method string, status int, d time.Duration) {
	m.requests.WithLabelValues(route, method, strconv.Itoa(status)).Observe(d.Seconds())
}

func (m *Metrics) order(err error, created bool) {
	outcome := "filled"
	switch {
	case err != nil:
		outcome = string(market.ErrorCode(err))
	case !created:
		outcome = "replayed"
	}
	m.orders.WithLabelValues(outcome).Inc()
}
