// Command two-deployments is the seed's end-to-end example in Go: it deploys
// two deployments of the Model class with two replicas each, lists them,
// then calls each twice through handles and twice over HTTP, printing what
// the seed prints. Run it against `natserve up`:
//
//	go run ./cmd/natserve up &
//	go run ./examples/two-deployments
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/natserve/natserve/client"
)

func main() {
	server := flag.String("server", "", "natserve broker URL (default $NATSERVE_URL, then nats://127.0.0.1:4222)")
	httpURL := flag.String("http", "http://127.0.0.1:8000", "the ingress")
	flag.Parse()
	if err := run(*server, *httpURL); err != nil {
		fmt.Fprintln(os.Stderr, "two-deployments:", err)
		os.Exit(1)
	}
}

func run(server, httpURL string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := client.Connect(ctx, server)
	if err != nil {
		return err
	}
	defer c.Close()

	// Deployment.options(name="rep-1", num_replicas=2).deploy("/model/rep-1.pkl")
	for _, name := range []string{"rep-1", "rep-2"} {
		args, _ := json.Marshal([]string{"/model/" + name + ".pkl"})
		if _, err := c.Deploy(ctx, client.DeploymentSpec{Name: name, Class: "Model", InitArgs: args, NumReplicas: 2}); err != nil {
			return err
		}
	}
	for _, name := range []string{"rep-1", "rep-2"} {
		if _, err := c.WaitHealthy(ctx, name, nil); err != nil {
			return err
		}
	}

	// serve.list_deployments()
	ds, err := c.List(ctx)
	if err != nil {
		return err
	}
	var list []string
	for _, d := range ds {
		route, _ := d.Spec.Route()
		list = append(list, fmt.Sprintf("'%s': Deployment(name=%s,version=%s,route_prefix=%s)", d.Spec.Name, d.Spec.Name, none(d.Spec.Version), route))
	}
	fmt.Printf("{%s}\n", strings.Join(list, ", "))

	fmt.Println("ServerHandle API responses: " + strings.Repeat("--", 5))
	for i := 0; i < 2; i++ {
		for _, name := range []string{"rep-1", "rep-2"} {
			// serve.get_deployment(d_name).get_handle()
			d, err := c.Get(ctx, name)
			if err != nil {
				return err
			}
			h := c.Handle(d.Spec.Name)
			fmt.Printf("handle name : %s\n", name)
			pred, err := client.Await[string](h.Remote(ctx, rand.Float64()))
			if err != nil {
				return err
			}
			fmt.Printf("prediction  : %s\n", pred)
			fmt.Println("--")
		}
	}

	fmt.Println("HTTP responses: " + strings.Repeat("--", 5))
	for i := 0; i < 2; i++ {
		for _, name := range []string{"rep-1", "rep-2"} {
			url := fmt.Sprintf("%s/%s?data=%v", httpURL, name, rand.Float64())
			resp, err := http.Get(url)
			if err != nil {
				return err
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
			}
			fmt.Printf("handle name : %s\n", name)
			fmt.Printf("prediction  : %s\n", body)
		}
	}
	return nil
}

func none(s string) string {
	if s == "" {
		return "None"
	}
	return s
}
