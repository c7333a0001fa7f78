package main

import (
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

func TestBuckets(t *testing.T) {
	prev := -1
	for us := uint64(0); us < 1<<22; us += 1 + us/64 {
		b := bucketOf(us)
		if b < prev {
			t.Fatalf("bucket of %d µs is %d, below %d", us, b, prev)
		}
		prev = b
		lo, hi := bucketLow(b), bucketLow(b+1)
		if us < lo || us >= hi {
			t.Fatalf("%d µs in bucket %d [%d, %d)", us, b, lo, hi)
		}
		if us >= 16 && float64(hi-lo)/float64(lo) > 0.07 {
			t.Fatalf("bucket %d [%d, %d) is wider than 7%%", b, lo, hi)
		}
	}
}

func TestQuantile(t *testing.T) {
	h := &histogram{}
	for i := 1; i <= 1000; i++ {
		h.add(uint32(i), time.Duration(i)*time.Millisecond)
	}
	c := h.merged()
	for _, q := range []struct{ q, want float64 }{{0.5, 500}, {0.99, 990}, {1, 1000}} {
		got := quantile(c, q.q)
		if got < q.want || got > q.want*1.07 {
			t.Errorf("q%.2f = %.1f ms, want %.0f (+7%%)", q.q, got, q.want)
		}
	}
	if quantile(make([]int64, histBuckets), 0.5) != 0 {
		t.Error("quantile of nothing")
	}
}

func TestPricesAreValid(t *testing.T) {
	for k := 0; k < 2000; k += 7 {
		for n := int64(0); n < 300; n += 13 {
			p := priceOf(k, n)
			d, err := decimal.NewFromString(p)
			if err != nil || !d.IsPositive() || !d.Equal(d.Round(2)) || d.StringFixed(2) != p {
				t.Fatalf("priceOf(%d, %d) = %q", k, n, p)
			}
		}
	}
}

func TestSendTimes(t *testing.T) {
	s := newSendTimes(2)
	s.put(1, 7, 100)
	if at, ok := s.get(1, 7); !ok || at != 100 {
		t.Fatalf("get = %d %v", at, ok)
	}
	if _, ok := s.get(1, 7+ringSize); ok {
		t.Fatal("a version a ring apart matched")
	}
	s.put(1, 7+ringSize, 200)
	if _, ok := s.get(1, 7); ok {
		t.Fatal("an overwritten version still matched")
	}
}

func TestSeqOf(t *testing.T) {
	if n := seqOf([]byte(`{"type":"tick","seq":12345,"offer_id":"x"}`)); n != 12345 {
		t.Fatalf("seq %d", n)
	}
}

func TestFlags(t *testing.T) {
	if _, err := parseFlags([]string{"--admin-token", "x", "--duration", "10m"}); err == nil {
		t.Fatal("a duration over the cap was accepted")
	}
	c, err := parseFlags([]string{"--admin-token", "x", "--url", "http://127.0.0.1:1,http://127.0.0.1:2/"})
	if err != nil || len(c.urls) != 2 || c.urls[1] != "http://127.0.0.1:2" || c.duration != 20*time.Second {
		t.Fatalf("%+v %v", c, err)
	}
	if a := sourceAddr("http://127.0.0.1:8080", 3, 10); a == nil || a.String() != "127.0.0.5:0" {
		t.Fatalf("source address %v", a)
	}
	if a := sourceAddr("http://example.com:8080", 3, 10); a != nil {
		t.Fatalf("source address %v for a remote server", a)
	}
}
