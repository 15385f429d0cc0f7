// Command own-class is how a user brings their own model, and the
// production shape of a natserve node: a program that registers its own
// classes and calls worker.Main, so that it runs as the node agent and,
// re-executed by it, as each replica. Next to `natserve up`:
//
//	go run ./examples/own-class -nats nats://127.0.0.1:4222 -name mynode
//
// In a container (deploy/README.md): examples/own-class/Dockerfile builds it
// into an image that docker compose and deploy/k8s run on every node. It
// also registers the example classes, so that the quick start's
// deployments (examples/quickstart/serve.yaml) run on it; a real program
// registers only its own.
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"

	"github.com/natserve/natserve/examples/quickstart"
	"github.com/natserve/natserve/worker"
)

// MyModel doubles its input; a real one would load weights in NewMyModel.
type MyModel struct{ scale float64 }

// NewMyModel takes the factor to scale by.
func NewMyModel(scale float64) (*MyModel, error) {
	if scale == 0 {
		return nil, fmt.Errorf("scale must not be 0")
	}
	return &MyModel{scale: scale}, nil
}

// Call answers GET /my-model?data=X and handle calls with a number.
func (m *MyModel) Call(ctx context.Context, req *worker.Request) (string, error) {
	var data float64
	if req.IsHTTP() {
		v, err := strconv.ParseFloat(req.QueryParam("data"), 64)
		if err != nil {
			return "", fmt.Errorf("query parameter data=%q is not a number", req.QueryParam("data"))
		}
		data = v
	} else if err := req.Arg(0, &data); err != nil {
		return "", err
	}
	return fmt.Sprintf("MyModel (pid %d): %g × %g = %g", os.Getpid(), data, m.scale, data*m.scale), nil
}

// Predict is callable by name through handles.
func (m *MyModel) Predict(data float64) float64 { return data * m.scale }

func main() {
	var reg worker.Registry
	reg.Class("MyModel", NewMyModel)
	quickstart.Register(&reg) // the example classes, so that the quick start's deployments run here
	worker.Main(&reg)
}
