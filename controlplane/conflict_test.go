package controlplane

import (
	"context"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/internal/testutil"
)

// TestIsConflict checks the compare-and-set failures JetStream reports
// for a create, an update and a delete, by code, against a real bucket.
func TestIsConflict(t *testing.T) {
	b := testutil.Broker(t)
	js, err := jetstream.New(testutil.Conn(t, b.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "cas"})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Create(ctx, "k", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, "k", []byte("2"), rev); err != nil {
		t.Fatal(err)
	}
	_, createErr := kv.Create(ctx, "k", []byte("3"))
	_, updateErr := kv.Update(ctx, "k", []byte("3"), rev)
	deleteErr := kv.Delete(ctx, "k", jetstream.LastRevision(rev))
	for name, err := range map[string]error{"create": createErr, "update": updateErr, "delete": deleteErr} {
		if err == nil || !isConflict(err) {
			t.Errorf("%s with a stale revision: %v, want a conflict", name, err)
		}
		if ae := conflictOr(err, "k"); ae == nil || ae.Error() != `deployment "k" changed concurrently; read it again and retry` {
			t.Errorf("%s: conflictOr gave %v", name, ae)
		}
	}
	if isConflict(errors.New("wrong last sequence")) || isConflict(jetstream.ErrBucketNotFound) {
		t.Error("a message or another JetStream error counted as a conflict")
	}
}
