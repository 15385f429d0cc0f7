package quickstart_test

import (
	"slices"
	"testing"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/examples/quickstart"
	"github.com/natserve/natserve/worker"
)

// Every class serve.yaml deploys is registered, so that `natserve up` and
// the own-class node image both serve the whole quick start.
func TestServeYAMLClassesRegistered(t *testing.T) {
	cfg, err := client.LoadConfig("serve.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var reg worker.Registry
	quickstart.Register(&reg)
	classes := reg.Classes()
	if len(cfg.Deployments) == 0 {
		t.Fatal("serve.yaml has no deployments")
	}
	for _, d := range cfg.Deployments {
		if !slices.Contains(classes, d.Spec.Class) {
			t.Errorf("serve.yaml deployment %s uses class %s, which quickstart.Register does not register (have %v)", d.Spec.Name, d.Spec.Class, classes)
		}
	}
}
