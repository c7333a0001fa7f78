package broker_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync/atomic"
	"testing"

	"computebroker/broker"
	"computebroker/catalog"
	"computebroker/internal/testsvc"
	"computebroker/ledger"
	"computebroker/market"
)

// ingestService is a Service on a fresh Redis database with one approved
// provider and n offers in one market; live adds the matching books, as
// brokerd runs it.
func ingestService(b *testing.B, n int, live bool) (*broker.Service, market.Account, []string) {
	b.Helper()
	rdb, err := broker.OpenRedis(testsvc.Redis(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rdb.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	offers := catalog.New(rdb)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc := broker.NewService(broker.Config{Logger: quiet}, offers, ledger.New(rdb), nil, nil)
	admin := market.Account{ID: "admin", Role: market.RoleAdmin}
	regulator := market.Account{ID: "reg", Role: market.RoleRegulator}
	p, _, err := svc.CreateAccount(ctx, admin, broker.NewAccount{Role: market.RoleProvider, Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	if p, err = svc.SetProviderStatus(ctx, regulator, p.ID, market.ProviderApproved); err != nil {
		b.Fatal(err)
	}
	if live {
		l := broker.NewLive(offers, market.DefaultCatalog().Markets(), quiet)
		if err := l.Start(ctx); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(l.Close)
		svc.UseLive(l)
	}
	ids := make([]string, n)
	for i := range ids {
		o, err := svc.CreateOffer(ctx, p, broker.NewOfferRequest{ResourceClass: "gpu.h100-80g", Region: "cn-east", Units: 8, Price: "21.00"})
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = o.ID
	}
	return svc, p, ids
}

// BenchmarkPriceIngest is a provider's price change through
// Service.UpdateOffer, the path of the provider stream and of PATCH, on
// real Redis: serially (one connection's commands) and from 64 goroutines
// (many connections). ops/s is the throughput.
func BenchmarkPriceIngest(b *testing.B) {
	prices := make([]string, 100)
	for i := range prices {
		prices[i] = fmt.Sprintf("%d.%02d", 18+i%7, i)
	}
	for _, live := range []bool{false, true} {
		name := "redis"
		if live {
			name = "redis+books"
		}
		b.Run(name+"/serial", func(b *testing.B) {
			svc, p, ids := ingestService(b, 64, live)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				price := prices[i%len(prices)]
				if _, err := svc.UpdateOffer(ctx, p, ids[i%len(ids)], broker.OfferPatch{Price: &price}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
		b.Run(name+"/parallel64", func(b *testing.B) {
			svc, p, ids := ingestService(b, 64, live)
			ctx := context.Background()
			var next atomic.Int64
			b.SetParallelism(64 / runtime.GOMAXPROCS(0))
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := int(next.Add(1))
					price := prices[i%len(prices)]
					if _, err := svc.UpdateOffer(ctx, p, ids[i%len(ids)], broker.OfferPatch{Price: &price}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}
