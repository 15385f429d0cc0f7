package auth_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natserve/natserve/broker"
	"github.com/natserve/natserve/internal/auth"
	"github.com/natserve/natserve/internal/wire"
)

// TestRolesAtScale runs what 1,000 deployments need under the roles'
// permissions (issue 22): a node's watch of 2,000 large assignments gets
// every one (the watch answers the server's flow control, which its
// allow-list refused, so the watch stalled), and the account holds more
// than 256 streams (one request stream per deployment).
func TestRolesAtScale(t *testing.T) {
	set, err := auth.Open(filepath.Join(t.TempDir(), "auth"), "w1")
	if err != nil {
		t.Fatal(err)
	}
	cfg := broker.DefaultConfig()
	cfg.Port = -1
	cfg.DataDir = t.TempDir()
	cfg.Auth = set
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
	admin, err := nats.Connect(b.ClientURL(), nats.UserCredentials(set.CredsPath(wire.RoleAdmin)))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ajs, _ := jetstream.New(admin)
	kv, err := ajs.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: wire.BucketAssignments})
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	val := []byte(strings.Repeat("x", 2048)) // an assignment carries the replica's credentials
	// Stored asynchronously: 2,000 round trips are slow on a loaded machine.
	for i := 0; i < n; i++ {
		if _, err := ajs.PublishAsync("$KV."+wire.BucketAssignments+fmt.Sprintf(".w1.r%04d", i), val); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-ajs.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("storing the assignments took over 2 minutes")
	}
	if st, err := kv.Status(ctx); err != nil || st.Values() != n {
		t.Fatalf("bucket holds %v values (%v), want %d", st, err, n)
	}

	node, err := nats.Connect(b.ClientURL(), nats.UserCredentials(set.NodeCredsPath("w1")), nats.CustomInboxPrefix(wire.InboxPrefix(wire.RoleNode, "w1")))
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	njs, _ := jetstream.New(node)
	nkv, err := njs.KeyValue(ctx, wire.BucketAssignments)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	w, err := nkv.Watch(ctx, "w1.*")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop() }()
	got := 0
	stall := time.NewTimer(20 * time.Second)
	for got < n {
		select {
		case e := <-w.Updates():
			if e != nil {
				got++
			}
		case <-stall.C:
			t.Fatalf("the node's watch stalled at %d of %d assignments", got, n)
		}
	}
	t.Logf("node watch: %d assignments of %d bytes in %v", n, len(val), time.Since(start).Round(time.Millisecond))

	for i := 0; i < 300; i++ {
		if _, err := ajs.CreateStream(ctx, jetstream.StreamConfig{Name: fmt.Sprintf("s%03d", i), Subjects: []string{fmt.Sprintf("scale.s%03d", i)}, Storage: jetstream.MemoryStorage}); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
}
