package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/natserve/natserve/client"
)

// Parse a config file in the style of Ray Serve's.
func ExampleParseConfig() {
	cfg, err := client.ParseConfig("serve.yaml", []byte(`
deployments:
  - name: rep-1
    class: Model
    init_args: ["/model/rep-1.pkl"]
    num_replicas: 2
`))
	if err != nil {
		log.Fatal(err)
	}
	d := cfg.Deployments[0].Spec
	route, _ := d.Route()
	fmt.Println(d.Name, d.Class, d.NumReplicas, route, d.MaxOngoingRequests)
	// Output: rep-1 Model 2 /rep-1 5
}

// Call a deployment through a handle, as serve.get_deployment(name).get_handle().
func ExampleHandle_Call() {
	ctx := context.Background()
	c, err := client.Connect(ctx, "") // $NATSERVE_URL, then nats://127.0.0.1:4222
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	var prediction string
	err = c.Handle("rep-1").Call(ctx, &prediction, 0.7)
	switch {
	case errors.Is(err, client.ErrNoReplicas):
		fmt.Println("rep-1 has no replicas running")
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Println(prediction)
	}
}

// Start calls at once and collect their results later, as handle.remote() and ray.get().
func ExampleHandle_Remote() {
	ctx := context.Background()
	c, err := client.Connect(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	h := c.Handle("AddModel").Method("predict")
	responses := []*client.Response{h.Remote(ctx, 1), h.Remote(ctx, 2)}
	for _, r := range responses {
		n, err := client.Await[int](r)
		fmt.Println(n, err)
	}
}

// Deploy with options, as Deployment.options(name=..., num_replicas=...).deploy(...).
func ExampleClient_Deploy() {
	ctx := context.Background()
	c, err := client.Connect(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	spec := client.DeploymentSpec{Name: "rep-1", Class: "Model", InitArgs: []byte(`["/model/rep-1.pkl"]`), NumReplicas: 2}
	if _, err := c.Deploy(ctx, spec); err != nil {
		log.Fatal(err)
	}
	d, err := c.WaitHealthy(ctx, "rep-1", nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(d.Status, d.Ready)
}
