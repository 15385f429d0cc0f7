package main_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
)

// TestQuickstartChat: the quick start's WebSocket chat through natserve up:
// two members of a room hear each other, and a close code travels back.
func TestQuickstartChat(t *testing.T) {
	u := up(t, "-f", filepath.Join(testutil.ModuleRoot(t), "examples/quickstart/serve.yaml"))
	cl, err := client.Connect(e2e.Ctx(5*time.Second), u.natsURL, client.WithCreds(u.creds()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.WaitHealthy(e2e.Ctx(60*time.Second), "chat", nil); err != nil {
		t.Fatal(err)
	}
	ws := "ws" + strings.TrimPrefix(u.httpBase, "http") + "/chat?room=r1&name="
	ann, _, err := websocket.DefaultDialer.Dial(ws+"ann", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ann.Close()
	bob, _, err := websocket.DefaultDialer.Dial(ws+"bob", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	// Both joined once bob hears his own message.
	if err := bob.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*websocket.Conn{bob, ann} {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, b, err := c.ReadMessage(); err != nil || string(b) != "bob: hi" {
			t.Fatalf("room message: %q %v", b, err)
		}
	}
	if err := ann.WriteMessage(websocket.TextMessage, []byte("/close 4000 done")); err != nil {
		t.Fatal(err)
	}
	_ = ann.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err = ann.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != 4000 || ce.Text != "done" {
		t.Fatalf("close: %v", err)
	}
}
