package matching

import (
	"testing"
	"time"
)

func BenchmarkZZClasses(b *testing.B) {
	w := benchWorldOnce(b)
	s := NewScratch()
	for i := range w.jobs {
		w.engine.Decide(&w.jobs[i], w.limits[i], s)
	}
	var tAny, tReg, tHot time.Duration
	var nAny, nReg, nHot int
	b.ResetTimer()
	for r := 0; r < b.N; r++ {
		for k := range w.jobs {
			t := time.Now()
			w.engine.Decide(&w.jobs[k], w.limits[k], s)
			d := time.Since(t)
			if len(w.jobs[k].Job.Regions) == 0 {
				tAny += d
				nAny++
			} else {
				tReg += d
				nReg++
			}
		}
		for k := 0; k < len(w.jobs); k += 8 {
			t := time.Now()
			for x := 0; x < 8; x++ {
				w.engine.Decide(&w.jobs[k], w.limits[k], s)
			}
			tHot += time.Since(t)
			nHot += 8
		}
	}
	b.ReportMetric(float64(tAny.Nanoseconds())/float64(nAny), "any-ns")
	b.ReportMetric(float64(tReg.Nanoseconds())/float64(nReg), "reg-ns")
	b.ReportMetric(float64(tHot.Nanoseconds())/float64(nHot), "hot-ns")
	b.ReportMetric(float64(nAny)/float64(nAny+nReg), "any-share")
}

func BenchmarkZZAny(b *testing.B) {
	w := benchWorldOnce(b)
	s := NewScratch()
	var idx []int
	for i := range w.jobs {
		if len(w.jobs[i].Job.Regions) == 0 {
			idx = append(idx, i)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := idx[i%len(idx)]
		w.engine.Decide(&w.jobs[k], w.limits[k], s)
	}
}
