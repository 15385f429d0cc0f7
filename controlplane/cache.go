package controlplane

import (
	"sort"
	"sync"

	"github.com/natserve/natserve/internal/wire"
)

// table caches one KV bucket, kept current by a watch and by the
// controller's own writes. An event older than what the table holds for
// its key is ignored, so a watch that lags behind a local write cannot undo
// it, and a deleted key cannot come back from a stale put.
type table[T any] struct {
	mu      sync.Mutex // guards rows, changes
	rows    map[string]*row[T]
	changes uint64 // puts and deletes taken: unchanged means no row changed

	// onChange, when set, sees every change the table takes, under mu:
	// prev and next are nil when the key was absent (or deleted) before
	// and after. It keeps the controller's indexes and its set of
	// deployments to reconcile; it must not call back into the table.
	onChange func(key string, prev, next *T)
}

type row[T any] struct {
	val     T
	rev     uint64
	deleted bool
}

func newTable[T any]() *table[T] { return &table[T]{rows: map[string]*row[T]{}} }

// put records a value at rev; it reports whether it was newer.
func (t *table[T]) put(key string, rev uint64, v T) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.rows[key]
	if ok && r.rev >= rev {
		return false
	}
	t.rows[key] = &row[T]{val: v, rev: rev}
	t.changes++
	if t.onChange != nil {
		var prev *T
		if ok && !r.deleted {
			prev = &r.val
		}
		t.onChange(key, prev, &v)
	}
	return true
}

// putJSON decodes b and records it; undecodable values are dropped. Agents
// write some of these buckets (their nodes and replicas), so b is vetted.
func (t *table[T]) putJSON(key string, rev uint64, b []byte) bool {
	var v T
	if wire.UnmarshalJSON(b, &v) != nil {
		return false
	}
	return t.put(key, rev, v)
}

// del records that key was deleted at rev (the revision of the delete
// marker, or the last revision known when deleting locally).
func (t *table[T]) del(key string, rev uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.rows[key]
	if ok && r.rev > rev {
		return
	}
	var zero T
	t.rows[key] = &row[T]{val: zero, rev: rev, deleted: true}
	t.changes++
	if t.onChange != nil && ok && !r.deleted {
		t.onChange(key, &r.val, nil)
	}
}

func (t *table[T]) get(key string) (T, uint64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.rows[key]
	if !ok || r.deleted {
		var zero T
		var rev uint64
		if ok {
			rev = r.rev
		}
		return zero, rev, false
	}
	return r.val, r.rev, true
}

type keyed[T any] struct {
	key string
	val T
	rev uint64
}

// keys returns the keys of the live rows, unsorted.
func (t *table[T]) keys() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(t.rows))
	for k, r := range t.rows {
		if !r.deleted {
			out = append(out, k)
		}
	}
	return out
}

// version counts the changes the table took.
func (t *table[T]) version() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changes
}

// each calls f for every live row, in no order, under the table's lock
// (f must not call back into the table), and returns the table's version
// it saw.
func (t *table[T]) each(f func(key string, val T, rev uint64)) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, r := range t.rows {
		if !r.deleted {
			f(k, r.val, r.rev)
		}
	}
	return t.changes
}

// all returns the live rows sorted by key.
func (t *table[T]) all() []keyed[T] {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]keyed[T], 0, len(t.rows))
	for k, r := range t.rows {
		if !r.deleted {
			out = append(out, keyed[T]{k, r.val, r.rev})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out
}
