// Package chat is an example WebSocket deployment: a net/http handler
// (registered with reg.HTTPHandler as the class Chat) that accepts
// WebSocket upgrades with gorilla/websocket. The quick start serves it at
// /chat:
//
//	websocat 'ws://localhost:8000/chat?room=lobby&name=ann'
//
// Every text message goes to everyone in the room on the same replica,
// the sender included, as "<name>: <text>"; binary messages come back to
// the sender unchanged. Commands: "/pid" answers "pid <pid>", "/burst N"
// sends N messages "0" … "N-1", "/close CODE REASON" closes the connection
// with that close code. A close from the client is answered with its code.
// Each connection holds one of the replica's max_ongoing_requests slots
// until it closes.
package chat

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/natserve/natserve/worker"
)

// Register adds the class Chat to reg.
func Register(reg *worker.Registry) {
	reg.HTTPHandler("Chat", New)
}

// maxMessage bounds one message from a client.
const maxMessage = 1 << 20

// New returns the chat handler.
func New() http.Handler {
	h := &hub{rooms: map[string]map[*member]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /", h.serve)
	return mux
}

type hub struct {
	mu    sync.Mutex
	rooms map[string]map[*member]bool
}

type member struct {
	name string
	mu   sync.Mutex // one writer at a time (gorilla/websocket's rule)
	c    *websocket.Conn
}

func (m *member) send(kind int, b []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	_ = m.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return m.c.WriteMessage(kind, b)
}

var upgrader = websocket.Upgrader{
	// The ingress forwards the client's Origin; a real application checks
	// it against its own sites.
	CheckOrigin: func(*http.Request) bool { return true },
}

func (h *hub) serve(w http.ResponseWriter, r *http.Request) {
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade answered the client (400, 426, …)
	}
	defer c.Close()
	c.SetReadLimit(maxMessage)
	room, name := r.URL.Query().Get("room"), r.URL.Query().Get("name")
	if room == "" {
		room = "lobby"
	}
	if name == "" {
		name = "anonymous"
	}
	me := &member{name: name, c: c}
	h.mu.Lock()
	if h.rooms[room] == nil {
		h.rooms[room] = map[*member]bool{}
	}
	h.rooms[room][me] = true
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.rooms[room], me)
		if len(h.rooms[room]) == 0 {
			delete(h.rooms, room)
		}
		h.mu.Unlock()
	}()
	for {
		kind, msg, err := c.ReadMessage()
		if err != nil {
			return // a close from the client was answered with its code by gorilla
		}
		if kind == websocket.BinaryMessage {
			if me.send(kind, msg) != nil {
				return
			}
			continue
		}
		text := string(msg)
		switch {
		case text == "/pid":
			err = me.send(websocket.TextMessage, []byte("pid "+strconv.Itoa(os.Getpid())))
		case strings.HasPrefix(text, "/burst "):
			n, _ := strconv.Atoi(strings.TrimPrefix(text, "/burst "))
			for i := 0; i < n && err == nil; i++ {
				err = me.send(websocket.TextMessage, []byte(strconv.Itoa(i)))
			}
		case strings.HasPrefix(text, "/close "):
			codeText, reason, _ := strings.Cut(strings.TrimPrefix(text, "/close "), " ")
			code, _ := strconv.Atoi(codeText)
			me.mu.Lock()
			_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
			me.mu.Unlock()
			// Wait for the client's answer to the close, briefly.
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
			}
		default:
			h.broadcast(room, []byte(fmt.Sprintf("%s: %s", name, text)))
		}
		if err != nil {
			return
		}
	}
}

// broadcast sends b to everyone in room (on this replica).
func (h *hub) broadcast(room string, b []byte) {
	h.mu.Lock()
	members := make([]*member, 0, len(h.rooms[room]))
	for m := range h.rooms[room] {
		members = append(members, m)
	}
	h.mu.Unlock()
	for _, m := range members {
		_ = m.send(websocket.TextMessage, b)
	}
}
