// Package seed holds the classes of Ray Serve's key-concepts examples,
// written for natserve. The natserve binary registers them, so the quick
// start needs no Go code; a user's program may register them too.
package seed

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"

	"github.com/natserve/natserve/worker"
)

// Register adds the seed's classes to reg.
func Register(reg *worker.Registry) {
	reg.Class("MyFirstDeployment", NewMyFirstDeployment)
	reg.Class("HTTPDeployment", NewHTTPDeployment)
	reg.Class("Model", NewModel)
	reg.Func("preprocess", Preprocess)
	reg.Class("AddModel", NewAddModel)
}

// MyFirstDeployment returns the message it was constructed with.
type MyFirstDeployment struct{ msg string }

// NewMyFirstDeployment takes the message to return.
func NewMyFirstDeployment(msg string) *MyFirstDeployment { return &MyFirstDeployment{msg: msg} }

// Call answers HTTP requests and handle calls with the message.
func (d *MyFirstDeployment) Call(req *worker.Request) string { return d.msg }

// OtherMethod returns the message too; handles call it as OtherMethod or other_method.
func (d *MyFirstDeployment) OtherMethod(arg any) string { return d.msg }

// HTTPDeployment says hello; the quick start serves it at /api.
type HTTPDeployment struct{}

// NewHTTPDeployment takes no arguments.
func NewHTTPDeployment() *HTTPDeployment { return &HTTPDeployment{} }

// Call returns "Hello world!".
func (HTTPDeployment) Call(req *worker.Request) string { return "Hello world!" }

// predictor is the seed's Model: a fake model "loaded" from a path.
type predictor struct{ path string }

// predict follows the seed: random() + data if data > 0.5 else data.
func (m predictor) predict(data float64) float64 {
	if data > 0.5 {
		return rand.Float64() + data
	}
	return data
}

// Model is the seed's end-to-end deployment.
type Model struct {
	path  string
	model predictor
}

// NewModel takes the path of the model to load.
func NewModel(path string) *Model { return &Model{path: path, model: predictor{path: path}} }

// Call reads data from the query (?data=X) over HTTP, or from the first
// argument of a handle call, and replies as the seed does.
func (m *Model) Call(ctx context.Context, req *worker.Request) (string, error) {
	var data float64
	if req.IsHTTP() {
		v, err := strconv.ParseFloat(req.QueryParam("data"), 64)
		if err != nil {
			return "", fmt.Errorf("query parameter data=%q is not a number", req.QueryParam("data"))
		}
		data = v
	} else if err := req.Arg(0, &data); err != nil {
		return "", fmt.Errorf("want one number: %w", err)
	}
	pred := m.model.predict(data)
	return fmt.Sprintf("(pid: %d); path: %s; data: %.3f; prediction: %.3f", os.Getpid(), m.path, data, pred), nil
}

// Preprocess is the graph example's function: inp + 1.
func Preprocess(inp int) int { return inp + 1 }

// AddModel is the graph example's model.
type AddModel struct{ increment int }

// NewAddModel takes the increment.
func NewAddModel(increment int) *AddModel { return &AddModel{increment: increment} }

// Predict returns inp + increment.
func (m *AddModel) Predict(inp int) int { return inp + m.increment }
