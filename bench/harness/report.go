package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

type key struct {
	config     string
	conc, size int
	n          int
}

type summary struct {
	rps, rpsMin, rpsMax float64
	p50, p99            float64
	cpu                 float64 // µs of server CPU per request (median)
	reads, writes       float64 // system calls per request (median)
	errors              int
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func summarize(ms []Measurement) map[key]summary {
	groups := map[key][]Measurement{}
	for _, m := range ms {
		k := key{m.Config, m.Conc, m.Size, m.N}
		groups[k] = append(groups[k], m)
	}
	out := map[key]summary{}
	for k, g := range groups {
		var rps, p50, p99, cpu, rd, wr []float64
		s := summary{rpsMin: g[0].RPS, rpsMax: g[0].RPS}
		for _, m := range g {
			rps = append(rps, m.RPS)
			p50 = append(p50, m.P50us)
			p99 = append(p99, m.P99us)
			cpu = append(cpu, m.CPUus)
			rd, wr = append(rd, m.Reads), append(wr, m.Writes)
			s.rpsMin, s.rpsMax = min(s.rpsMin, m.RPS), max(s.rpsMax, m.RPS)
			s.errors += m.Errors
		}
		s.rps, s.p50, s.p99, s.cpu = median(rps), median(p50), median(p99), median(cpu)
		s.reads, s.writes = median(rd), median(wr)
		out[k] = s
	}
	return out
}

func write(dir string, res *Results) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "results.json"), b, 0o644); err != nil {
		return err
	}
	md := report(res)
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Print(md)
	if err := plot(dir, res); err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
	}
	return nil
}

func report(res *Results) string {
	s := summarize(res.Measurements)
	var b strings.Builder
	fmt.Fprintf(&b, "Commit %s, %s, %s; each measurement %s, median of the repeats (min–max); natserve access log %s, tracing %s; load average (1, 5, 15 min) %s.\n\n",
		res.Commit, res.Machine, res.Date, res.Duration, onOff(res.AccessLog), onOff(res.Tracing), res.Load)
	fmt.Fprintln(&b, "| config | conc | payload | replicas | req/s (median) | min–max | p50 µs | p99 µs | server CPU µs/req | reads+writes /req | errors |")
	fmt.Fprintln(&b, "|---|---|---|---|---|---|---|---|---|---|---|")
	keys := make([]key, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	order := map[string]int{"A": 0, "E": 1, "N": 2, "D": 3, "C": 5, "H": 6}
	for k := range s {
		if strings.HasPrefix(k.config, "D ") { // variants of D, after it
			order[k.config] = 4
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		a, c := keys[i], keys[j]
		if a.conc != c.conc {
			return a.conc < c.conc
		}
		if a.size != c.size {
			return a.size < c.size
		}
		if a.n != c.n {
			return a.n < c.n
		}
		if order[a.config] != order[c.config] {
			return order[a.config] < order[c.config]
		}
		return a.config < c.config
	})
	names := map[string]string{"A": "A bare fasthttp", "E": "E nginx → replicas", "N": "N naive chain (fasthttp → nats.go → nats-server)", "D": "D natserve HTTP", "C": "C raw NATS req-reply", "H": "H natserve handle"}
	for _, k := range keys {
		v := s[k]
		cpu := "—"
		if v.cpu > 0 {
			cpu = fmt.Sprintf("%.1f", v.cpu)
		}
		name := names[k.config]
		if name == "" {
			name = k.config
		}
		sys := "—"
		if v.reads+v.writes > 0 {
			sys = fmt.Sprintf("%.2f + %.2f", v.reads, v.writes)
		}
		fmt.Fprintf(&b, "| %s | %d | %d B | %d | %.0f | %.0f–%.0f | %.0f | %.0f | %s | %s | %d |\n", name, k.conc, k.size, k.n, v.rps, v.rpsMin, v.rpsMax, v.p50, v.p99, cpu, sys, v.errors)
	}
	fmt.Fprintln(&b)
	fmt.Fprintln(&b, "Ratios (medians):")
	fmt.Fprintln(&b)
	fmt.Fprintln(&b, "| ratio | conc | payload | replicas | value | target |")
	fmt.Fprintln(&b, "|---|---|---|---|---|---|")
	for _, conc := range []int{1, 64} {
		for _, size := range []int{20, 10240} {
			for _, n := range []int{1, 2} {
				d, e, a := s[key{"D", conc, size, n}], s[key{"E", conc, size, n}], s[key{"A", conc, size, 0}]
				h, c := s[key{"H", conc, size, n}], s[key{"C", conc, size, n}]
				target := func(t string) string {
					if conc == 64 && size == 20 && n == 1 {
						return t
					}
					return ""
				}
				if nv := s[key{"N", conc, size, 1}]; nv.rps > 0 && n == 1 {
					fmt.Fprintf(&b, "| D/N throughput | %d | %d B | %d | %.2f | %s |\n", conc, size, n, d.rps/nv.rps, target("≥ 1 (must)"))
					if r, lo, hi, k := pairedRatio(res.Measurements, "D", "N", conc, size); k > 0 {
						fmt.Fprintf(&b, "| D/N throughput, median of %d paired repeats | %d | %d B | %d | %.2f (%.2f–%.2f) | %s |\n", k, conc, size, n, r, lo, hi, target("≥ 1 (must)"))
					}
					for _, v := range keysWithPrefix(s, "D ", conc, size, n) {
						dv := s[key{v, conc, size, n}]
						r, lo, hi, k := pairedRatio(res.Measurements, v, "D", conc, size)
						fmt.Fprintf(&b, "| (%s)/D throughput, median of %d paired repeats | %d | %d B | %d | %.2f (%.2f–%.2f); CPU %.1f vs %.1f µs/req | |\n", v, k, conc, size, n, r, lo, hi, dv.cpu, d.cpu)
					}
					if nv.cpu > 0 {
						fmt.Fprintf(&b, "| D/N server CPU per request | %d | %d B | %d | %.2f (%.1f vs %.1f µs) | ≤ 1 |\n", conc, size, n, d.cpu/nv.cpu, d.cpu, nv.cpu)
					}
				}
				if d.rps == 0 { // D not measured here (e.g. -replicas 1)
					continue
				}
				if e.rps > 0 {
					fmt.Fprintf(&b, "| D/E throughput | %d | %d B | %d | %.2f | %s |\n", conc, size, n, d.rps/e.rps, target("≥ 1 (goal)"))
				}
				if a.rps > 0 {
					fmt.Fprintf(&b, "| D/A throughput | %d | %d B | %d | %.2f | %s |\n", conc, size, n, d.rps/a.rps, target("≥ 0.5 (stretch)"))
				}
				if c.rps > 0 {
					t := ""
					if conc == 64 {
						t = "≥ 0.85"
					}
					fmt.Fprintf(&b, "| H/C throughput | %d | %d B | %d | %.2f | %s |\n", conc, size, n, h.rps/c.rps, t)
				}
				if conc == 1 && e.p50 > 0 {
					fmt.Fprintf(&b, "| D p50 / E p50 | %d | %d B | %d | %.2f (%.0f µs vs %.0f µs) | ≤ 1.5 (must), ≤ 1 (goal) |\n", conc, size, n, d.p50/e.p50, d.p50, e.p50)
					fmt.Fprintf(&b, "| D p99 / E p99 | %d | %d B | %d | %.2f (%.0f µs vs %.0f µs) | ≤ 2 (must), ≤ 1.5 (goal) |\n", conc, size, n, d.p99/e.p99, d.p99, e.p99)
				}
				if nv := s[key{"N", conc, size, 1}]; conc == 1 && n == 1 && nv.p50 > 0 {
					fmt.Fprintf(&b, "| D p50 / N p50 | %d | %d B | %d | %.2f (%.0f µs vs %.0f µs) | |\n", conc, size, n, d.p50/nv.p50, d.p50, nv.p50)
				}
			}
		}
	}
	fmt.Fprintln(&b)
	fmt.Fprintln(&b, "Memory (RSS, MB):")
	fmt.Fprintln(&b)
	mkeys := make([]string, 0, len(res.Memory))
	for k := range res.Memory {
		mkeys = append(mkeys, k)
	}
	sort.Strings(mkeys)
	for _, k := range mkeys {
		fmt.Fprintf(&b, "- %s: %.1f\n", k, res.Memory[k])
	}
	return b.String()
}

// plot draws throughput and p99 per configuration with gnuplot.
func plot(dir string, res *Results) error {
	if _, err := exec.LookPath("gnuplot"); err != nil {
		return fmt.Errorf("gnuplot not installed; no image")
	}
	s := summarize(res.Measurements)
	var data strings.Builder
	i := 0
	for _, conc := range []int{1, 64} {
		for _, size := range []int{20, 10240} {
			for _, n := range []int{1, 2} {
				fmt.Fprintf(&data, "%d \"c%d %s N%d\"", i, conc, map[int]string{20: "20B", 10240: "10KB"}[size], n)
				for _, cfg := range []string{"A", "E", "D"} {
					k := key{cfg, conc, size, n}
					if cfg == "A" {
						k.n = 0
					}
					fmt.Fprintf(&data, " %.0f %.0f", s[k].rps, s[k].p99)
				}
				fmt.Fprintln(&data)
				i++
			}
		}
	}
	dat := filepath.Join(dir, "throughput.dat")
	if err := os.WriteFile(dat, []byte(data.String()), 0o644); err != nil {
		return err
	}
	script := fmt.Sprintf(`set terminal pngcairo size 1200,800 font ",10"
set output "%s"
set multiplot layout 2,1 title "natserve %s — A bare fasthttp, E nginx→replicas, D natserve (median of repeats)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set xtics rotate by -20
set grid ytics
set ylabel "requests/s"
plot "%s" using 3:xtic(2) title "A", "" using 5 title "E nginx", "" using 7 title "D natserve"
set ylabel "p99 latency (µs)"
set logscale y
plot "%s" using 4:xtic(2) title "A", "" using 6 title "E nginx", "" using 8 title "D natserve"
unset multiplot
`, filepath.Join(dir, "throughput.png"), res.Commit, dat, dat)
	cmd := exec.Command("gnuplot")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// pairedRatio is the median over repeats of a's req/s over b's in the same
// repeat (both measured back to back in the interleave), with the spread.
func pairedRatio(ms []Measurement, a, b string, conc, size int) (med, lo, hi float64, n int) {
	byRep := map[int][2]float64{}
	for _, m := range ms {
		if m.Conc != conc || m.Size != size || (m.N != 1 && m.Config != "A") {
			continue
		}
		x := byRep[m.Repeat]
		switch m.Config {
		case a:
			x[0] = m.RPS
		case b:
			x[1] = m.RPS
		}
		byRep[m.Repeat] = x
	}
	var rs []float64
	for _, x := range byRep {
		if x[0] > 0 && x[1] > 0 {
			rs = append(rs, x[0]/x[1])
		}
	}
	if len(rs) == 0 {
		return 0, 0, 0, 0
	}
	sort.Float64s(rs)
	return median(rs), rs[0], rs[len(rs)-1], len(rs)
}

func keysWithPrefix(s map[key]summary, prefix string, conc, size, n int) []string {
	var out []string
	for k := range s {
		if strings.HasPrefix(k.config, prefix) && k.conc == conc && k.size == size && k.n == n {
			out = append(out, k.config)
		}
	}
	sort.Strings(out)
	return out
}
