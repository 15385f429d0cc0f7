package ingress

import (
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// The access log: one JSON line per routed request,
//
//	{"time":"2026-01-02T15:04:05.123Z","request_id":"…","deployment":"hello","method":"GET","path":"/hello","status":200,"bytes":20,"latency_ms":0.412,"replica":"…"}
//
// (and "trace_id" when the request is traced). Lines are appended by hand
// into a buffer (no fmt, no slog, no allocation per request) that is
// written when it passes accessLogFlushSize and every accessLogFlushEvery.
// Requests to /-/ (health checks) are not logged.

const (
	accessLogFlushSize  = 64 << 10
	accessLogFlushEvery = 250 * time.Millisecond
	accessLogMaxBuffer  = 4 << 20 // lines beyond this while the writer is stuck are dropped, and counted
)

type accessLog struct {
	w   io.Writer
	log *slog.Logger

	mu  sync.Mutex // guards buf
	buf []byte

	wmu     sync.Mutex // guards spare, failing; held while writing to w
	spare   []byte
	failing bool

	dropped atomic.Int64

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

func newAccessLog(w io.Writer, log *slog.Logger) *accessLog {
	l := &accessLog{w: w, log: log, buf: make([]byte, 0, accessLogFlushSize), spare: make([]byte, 0, accessLogFlushSize),
		stop: make(chan struct{}), done: make(chan struct{})}
	go l.flushLoop()
	return l
}

func (l *accessLog) flushLoop() {
	defer close(l.done)
	t := time.NewTicker(accessLogFlushEvery)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			l.flush()
			return
		case <-t.C:
			l.flush()
		}
	}
}

// Close writes what is buffered and stops the flusher. Idempotent.
func (l *accessLog) Close() {
	l.once.Do(func() { close(l.stop) })
	<-l.done
}

// add appends one line.
func (l *accessLog) add(line []byte) {
	l.mu.Lock()
	if len(l.buf)+len(line) > accessLogMaxBuffer {
		l.mu.Unlock()
		l.dropped.Add(1)
		return
	}
	l.buf = append(l.buf, line...)
	full := len(l.buf) >= accessLogFlushSize
	l.mu.Unlock()
	if full {
		l.flush()
	}
}

// flush writes the buffered lines; one flush runs at a time, and requests
// keep appending to the other buffer meanwhile.
func (l *accessLog) flush() {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.mu.Lock()
	out := l.buf
	l.buf = l.spare[:0]
	l.mu.Unlock()
	if len(out) > 0 {
		_, err := l.w.Write(out)
		if err != nil && !l.failing {
			l.log.Warn("writing the access log failed", "err", err)
		}
		l.failing = err != nil
	}
	if n := l.dropped.Swap(0); n > 0 {
		l.log.Warn("access log lines dropped: the writer is too slow", "lines", n)
	}
	if cap(out) > 4*accessLogFlushSize { // do not keep a burst's buffer
		out = make([]byte, 0, accessLogFlushSize)
	}
	l.spare = out[:0]
}

// accessEntry is what one line records.
type accessEntry struct {
	start      time.Time
	id         string
	deployment string
	replica    string
	replicaRaw []byte // the replica, when it came as bytes (then replica is "")
	traceID    string // "" unless traced
	method     []byte
	path       []byte
	status     int
	bytes      int
}

// appendAccessLine appends e as one JSON line.
func appendAccessLine(b []byte, e *accessEntry, latency time.Duration) []byte {
	b = append(b, `{"time":"`...)
	b = appendAccessTime(b, e.start)
	b = append(b, `","request_id":`...)
	b = appendJSONString(b, e.id)
	b = append(b, `,"deployment":`...)
	b = appendJSONString(b, e.deployment)
	b = append(b, `,"method":`...)
	b = appendJSONString(b, e.method)
	b = append(b, `,"path":`...)
	b = appendJSONString(b, e.path)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(e.status), 10)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, int64(e.bytes), 10)
	b = append(b, `,"latency_ms":`...)
	b = appendMillis(b, latency.Microseconds())
	b = append(b, `,"replica":`...)
	if e.replicaRaw != nil {
		b = appendJSONString(b, e.replicaRaw)
	} else {
		b = appendJSONString(b, e.replica)
	}
	if e.traceID != "" {
		b = append(b, `,"trace_id":`...)
		b = appendJSONString(b, e.traceID)
	}
	return append(b, "}\n"...)
}

// accessSecond is the access log's timestamp up to its second,
// "2006-01-02T15:04:05.", formatted once a second: time.AppendFormat was
// 60% of appendAccessLine's CPU (issue 18's profile of natserve up).
type accessSecond struct {
	unix   int64
	prefix [len(accessSecondLayout)]byte
}

const accessSecondLayout = "2006-01-02T15:04:05."

var accessStamp atomic.Pointer[accessSecond]

// appendAccessTime appends t as "2006-01-02T15:04:05.000Z" (UTC,
// milliseconds), what t.UTC().AppendFormat with that layout appends.
func appendAccessTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	sec := t.Unix()
	c := accessStamp.Load()
	if c == nil || c.unix != sec {
		var buf [64]byte
		p := t.AppendFormat(buf[:0], accessSecondLayout)
		if len(p) != len(accessSecondLayout) { // a year outside 0000–9999
			return t.AppendFormat(b, "2006-01-02T15:04:05.000Z")
		}
		c = &accessSecond{unix: sec}
		copy(c.prefix[:], p)
		accessStamp.Store(c)
	}
	ms := t.Nanosecond() / 1e6
	b = append(b, c.prefix[:]...)
	return append(b, byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10), 'Z')
}

// appendMillis appends us microseconds as milliseconds, what
// strconv.AppendFloat(b, float64(us)/1000, 'f', -1, 64) appends ("0.412",
// "12", "1.5"), in integers: the float formatting was a quarter of
// appendAccessLine. Below 10^15 µs the decimal has at most 15 significant
// digits, so it is the shortest one that reads back as the same float64.
func appendMillis(b []byte, us int64) []byte {
	if us < 0 || us >= 1e15 {
		return strconv.AppendFloat(b, float64(us)/1000, 'f', -1, 64)
	}
	b = strconv.AppendInt(b, us/1000, 10)
	frac := us % 1000
	if frac == 0 {
		return b
	}
	d := [3]byte{byte('0' + frac/100), byte('0' + frac/10%10), byte('0' + frac%10)}
	n := 3
	for d[n-1] == '0' {
		n--
	}
	b = append(b, '.')
	return append(b, d[:n]...)
}

const hexDigits = "0123456789abcdef"

// jsonPlain marks the bytes appendJSONString copies as they are: ASCII
// but control characters, '"' and '\\'.
var jsonPlain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD.
func appendJSONString[T string | []byte](b []byte, s T) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if jsonPlain[c] {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
			if r != utf8.RuneError || size != 1 {
				i += size
				continue
			}
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		i++
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
