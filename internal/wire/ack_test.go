package wire

import (
	"strings"
	"testing"
	"time"
)

func TestAckRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		replica string
		flags   byte
	}{{"r1", 0}, {"16mxsmlvcxepsplgrwrgul", AckIdempotent}} {
		b := AppendAck(nil, tc.replica, tc.flags)
		r, f, ok := ParseAck(b)
		if !ok || r != tc.replica || f != tc.flags {
			t.Errorf("ParseAck(AppendAck(%q, %d)) = %q, %d, %v", tc.replica, tc.flags, r, f, ok)
		}
	}
	// No reply is taken for an acknowledgment: every msgpack value and
	// HTTP reply envelope starts with another byte.
	for _, v := range []any{nil, "", "x", 0, []any{1}, map[string]int{"a": 1}, []byte{0xc1}} {
		b, err := MarshalValue(v)
		if err != nil {
			t.Fatal(err)
		}
		if IsAck(b) {
			t.Errorf("the reply %v (% x) reads as an acknowledgment", v, b)
		}
	}
	if IsAck(AppendHTTPReply(nil, &HTTPReply{Status: 200, Body: []byte{0xc1, 0}})) || IsAck(nil) || IsAck([]byte{0xc1}) {
		t.Error("an HTTP reply or a short payload reads as an acknowledgment")
	}
}

func TestAckBy(t *testing.T) {
	now := time.Now().Truncate(time.Microsecond)
	got, err := ParseAckBy(FormatAckBy(now))
	if err != nil || !got.Equal(now) {
		t.Fatalf("round trip: %v %v, want %v", got, err, now)
	}
	if got, err := ParseAckBy(""); err != nil || !got.IsZero() {
		t.Errorf("empty: %v %v", got, err)
	}
	for _, bad := range []string{"x", "-5", "0", "123456789012345678901", "1e9"} {
		if _, err := ParseAckBy(bad); err == nil {
			t.Errorf("ParseAckBy(%q) accepted", bad)
		}
	}
}

func FuzzParseAck(f *testing.F) {
	f.Add([]byte{0xc1, 1, 'r', '1'})
	f.Add([]byte{0xc1})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, flags, ok := ParseAck(b)
		if ok && string(AppendAck(nil, r, flags)) != string(b) {
			t.Fatalf("% x does not round-trip", b)
		}
	})
}

func FuzzParseAckBy(f *testing.F) {
	f.Add("1700000000000000")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		if tm, err := ParseAckBy(s); err == nil && s != "" && FormatAckBy(tm) != s && s[0] != '0' && s[0] != '+' {
			t.Fatalf("%q parsed as %v, formats as %q", s, tm, FormatAckBy(tm))
		}
	})
}

func TestCoalescedAcks(t *testing.T) {
	for _, tc := range []struct {
		reply, prefix, token string
		ok                   bool
	}{
		{"_INBOX.client.Abc123.-1k", "_INBOX.client.Abc123.", "-1k", true},
		{"_INBOX.client.Abc123.1k", "", "", false}, // an older client's token
		{"_INBOX.client.Abc123.-", "", "", false},  // the batch token itself
		{"_INBOX.Kq9-x2", "", "", false},           // a raw inbox
		{"-1k", "", "", false},                     // no prefix
		{"_INBOX.a.-b.c", "", "", false},           // the mark is not in the last token
		{"_INBOX.client.Abc123.-", "", "", false},  // empty token after the mark
		{"x.--", "x.", "--", true},                 // any token after the mark
		{"", "", "", false},
	} {
		p, tok, ok := SplitAckReply(tc.reply)
		if p != tc.prefix || tok != tc.token || ok != tc.ok {
			t.Errorf("SplitAckReply(%q) = %q, %q, %v; want %q, %q, %v", tc.reply, p, tok, ok, tc.prefix, tc.token, tc.ok)
		}
	}
	b := AppendAcksHeader(nil, "rabc", AckIdempotent)
	for _, tok := range []string{"-1", "-2z", "-zz9"} {
		b = AppendAckToken(b, tok)
	}
	if !IsAck(b) {
		t.Fatal("a coalesced acknowledgment is not an acknowledgment")
	}
	r, f, toks, ok := ParseAcks(b)
	if !ok || string(r) != "rabc" || f != AckIdempotent {
		t.Fatalf("ParseAcks: %q %d %v", r, f, ok)
	}
	var got []string
	for tok, rest := NextAckToken(toks); len(tok) > 0; tok, rest = NextAckToken(rest) {
		got = append(got, string(tok))
	}
	if len(got) != 3 || got[0] != "-1" || got[1] != "-2z" || got[2] != "-zz9" {
		t.Fatalf("tokens %q", got)
	}
	if _, _, _, ok := ParseAcks([]byte{0xc1, 0, 9, 'r'}); ok {
		t.Fatal("a truncated coalesced acknowledgment parsed")
	}
}

func TestCoalescedReplies(t *testing.T) {
	for _, tc := range []struct {
		reply, subject, token string
		ok                    bool
	}{
		{"_INBOX.client.Abc123.-1k", "_INBOX.client.Abc123.-", "-1k", true},
		{"_INBOX.client.Abc123.1k", "", "", false},             // an older client's token
		{"_INBOX.client.Abc123.-", "", "", false},              // the batch token itself
		{"_INBOX.Kq9-x2", "", "", false},                       // a raw inbox
		{"_INBOX.a.-b.c", "", "", false},                       // the mark is not in the last token
		{"x." + "-" + strings.Repeat("a", 255), "", "", false}, // too long for the length byte
		{"", "", "", false},
	} {
		s, tok, ok := ReplySubject(tc.reply)
		if s != tc.subject || tok != tc.token || ok != tc.ok {
			t.Errorf("ReplySubject(%q) = %q, %q, %v; want %q, %q, %v", tc.reply, s, tok, ok, tc.subject, tc.token, tc.ok)
		}
		if p, _, ok := SplitAckReply(tc.reply); ok && tc.ok && s != p+AckBatchToken {
			t.Errorf("ReplySubject(%q) = %q, not the acknowledgments' subject %q", tc.reply, s, p+AckBatchToken)
		}
	}
	for _, body := range [][]byte{nil, {0xc1, 0}, []byte("\x82\xa1s\xcc\xc8")} {
		b := append(AppendReplyHeader(nil, "-2z"), body...)
		tok, data, ok := ParseReply(b)
		if !ok || string(tok) != "-2z" || string(data) != string(body) {
			t.Fatalf("ParseReply(% x) = %q, % x, %v", b, tok, data, ok)
		}
		if _, _, _, ok := ParseAcks(b); ok {
			t.Fatalf("a coalesced reply % x parsed as acknowledgments", b)
		}
	}
	acks := AppendAckToken(AppendAcksHeader(nil, "rabc", 0), "-1")
	if _, _, ok := ParseReply(acks); ok {
		t.Fatal("coalesced acknowledgments parsed as a reply")
	}
	if _, _, ok := ParseReply([]byte{'R', 9, '-'}); ok {
		t.Fatal("a truncated coalesced reply parsed")
	}
}
