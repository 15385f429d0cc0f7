package deploy_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

type manifest struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Spec struct {
		Replicas *int `yaml:"replicas"`
		Template struct {
			Spec struct {
				Containers []struct {
					Image        string   `yaml:"image"`
					Args         []string `yaml:"args"`
					VolumeMounts []struct {
						Name      string `yaml:"name"`
						MountPath string `yaml:"mountPath"`
					} `yaml:"volumeMounts"`
				} `yaml:"containers"`
				Volumes []struct {
					Name   string `yaml:"name"`
					Secret *struct {
						SecretName string `yaml:"secretName"`
					} `yaml:"secret"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

// TestKubernetesManifests parses deploy/k8s and checks the topology: a NATS
// StatefulSet of 3, 2 controllers, an ingress Deployment and Service, a
// node agent DaemonSet, all running subcommands that exist; the node agent
// runs the user's program, not the natserve image with the example classes.
func TestKubernetesManifests(t *testing.T) {
	files, _ := filepath.Glob("k8s/*.yaml")
	if len(files) == 0 {
		t.Fatal("no manifests in deploy/k8s")
	}
	got := map[string]manifest{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(false)
		for {
			var m manifest
			if err := dec.Decode(&m); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if m.APIVersion == "" || m.Kind == "" || m.Metadata.Name == "" {
				t.Fatalf("%s: a document without apiVersion, kind or name", f)
			}
			got[m.Kind+"/"+m.Metadata.Name] = m
		}
	}
	want := map[string]struct {
		replicas int
		command  string
		secret   string // the only credentials Secret it mounts
		creds    string // its -auth or -creds flag
	}{
		"StatefulSet/nats":               {3, "broker", "natserve-auth-broker", "-auth=/etc/natserve/auth"},
		"Deployment/natserve-controller": {2, "controller", "natserve-auth-controller", "-creds=/etc/natserve/auth/controller.creds"},
		"Deployment/natserve-ingress":    {2, "ingress", "natserve-auth-ingress", "-creds=/etc/natserve/auth/ingress.creds"},
		"DaemonSet/natserve-node-agent":  {-1, "agent", "natserve-auth-node", "-creds=/etc/natserve/auth/node-$(NATSERVE_NODE).creds"},
	}
	for key, w := range want {
		m, ok := got[key]
		if !ok {
			t.Errorf("missing %s", key)
			continue
		}
		if w.replicas >= 0 && (m.Spec.Replicas == nil || *m.Spec.Replicas != w.replicas) {
			t.Errorf("%s: replicas %v, want %d", key, m.Spec.Replicas, w.replicas)
		}
		cs := m.Spec.Template.Spec.Containers
		if len(cs) != 1 || len(cs[0].Args) == 0 || cs[0].Args[0] != w.command || !strings.HasPrefix(cs[0].Image, "natserve") {
			t.Errorf("%s: containers %+v, want natserve %s", key, cs, w.command)
		}
		if len(cs) != 1 {
			continue
		}
		// Credentials: no anonymous broker, and only its own role's Secret,
		// mounted where its flag points.
		if !slices.Contains(cs[0].Args, w.creds) {
			t.Errorf("%s: args %v, want %s", key, cs[0].Args, w.creds)
		}
		for _, a := range cs[0].Args {
			if strings.HasPrefix(a, "-no-auth") || strings.HasPrefix(a, "--no-auth") {
				t.Errorf("%s: runs with %s: every broker must require credentials", key, a)
			}
		}
		var secrets []string
		authVolume := ""
		for _, v := range m.Spec.Template.Spec.Volumes {
			if v.Secret != nil && strings.HasPrefix(v.Secret.SecretName, "natserve-auth") {
				secrets = append(secrets, v.Secret.SecretName)
				authVolume = v.Name
			}
		}
		if len(secrets) != 1 || secrets[0] != w.secret {
			t.Errorf("%s: mounts credentials Secrets %v, want only %s", key, secrets, w.secret)
			continue
		}
		mounted := false
		for _, vm := range cs[0].VolumeMounts {
			mounted = mounted || (vm.Name == authVolume && vm.MountPath == "/etc/natserve/auth")
		}
		if !mounted {
			t.Errorf("%s: the volume %s of Secret %s is not mounted at /etc/natserve/auth", key, authVolume, w.secret)
		}
		checkRouteAuth(t, key, cs[0].Args, "/etc/natserve/auth")
	}
	if m, ok := got["StatefulSet/nats"]; ok && len(m.Spec.Template.Spec.Containers) == 1 && !slices.ContainsFunc(m.Spec.Template.Spec.Containers[0].Args, func(a string) bool { return strings.HasPrefix(a, "-cluster-port=") }) {
		t.Error("StatefulSet/nats: no -cluster-port, want a cluster of three")
	}
	if node, ctl := got["DaemonSet/natserve-node-agent"].Spec.Template.Spec.Containers, got["Deployment/natserve-controller"].Spec.Template.Spec.Containers; len(node) == 1 && len(ctl) == 1 && node[0].Image == ctl[0].Image {
		t.Errorf("the node agent runs the servers' image %s, want the user's program (examples/own-class/Dockerfile)", node[0].Image)
	}
	for _, key := range []string{"Service/nats", "Service/natserve-ingress"} {
		if _, ok := got[key]; !ok {
			t.Errorf("missing %s", key)
		}
	}
}

// TestComposeCredentials checks docker-compose.yml statically: no broker
// runs with -no-auth, every service but auth waits for auth to complete and
// mounts only its own role's credentials volume.
func TestComposeCredentials(t *testing.T) {
	b, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Services map[string]struct {
			Command   []string       `yaml:"command"`
			Volumes   []string       `yaml:"volumes"`
			DependsOn map[string]any `yaml:"depends_on"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"nats1": "auth-broker", "nats2": "auth-broker", "nats3": "auth-broker",
		"controller1": "auth-controller", "controller2": "auth-controller",
		"ingress": "auth-ingress", "worker1": "auth-worker1", "worker2": "auth-worker2",
		"setup": "auth-admin",
	}
	if a, ok := f.Services["auth"]; !ok {
		t.Fatal("no one-shot service auth")
	} else if !slices.Contains(a.Command, "-nodes=worker1,worker2") {
		t.Errorf("auth: command %q, want credentials for worker1 and worker2", a.Command)
	}
	for name, s := range f.Services {
		if name == "auth" {
			continue
		}
		w, ok := want[name]
		if !ok {
			t.Errorf("service %s: no credentials expected for it in this test", name)
			continue
		}
		for _, a := range s.Command {
			if strings.Contains(a, "no-auth") {
				t.Errorf("%s runs with %s", name, a)
			}
		}
		var vols []string
		for _, v := range s.Volumes {
			if src, _, _ := strings.Cut(v, ":"); strings.HasPrefix(src, "auth") {
				vols = append(vols, src)
			}
		}
		if len(vols) != 1 || vols[0] != w {
			t.Errorf("%s mounts credentials volumes %v, want only %s", name, vols, w)
		}
		for _, v := range s.Volumes {
			if src, rest, _ := strings.Cut(v, ":"); src == w {
				mount, _, _ := strings.Cut(rest, ":")
				checkRouteAuth(t, name, s.Command, mount)
			}
		}
		cond, _ := s.DependsOn["auth"].(map[string]any)
		if cond["condition"] != "service_completed_successfully" {
			t.Errorf("%s: depends_on auth %v, want condition service_completed_successfully", name, s.DependsOn["auth"])
		}
	}
}

// checkRouteAuth: a broker with a cluster port (a route listener) loads the
// route secret from the broker's share of the credentials, mounted at
// mount (without TLS, nothing else would authenticate routes), and no route
// URL carries credentials on the command line.
func checkRouteAuth(t *testing.T, who string, args []string, mount string) {
	t.Helper()
	cluster, secret := false, ""
	for _, a := range args {
		a = "-" + strings.TrimLeft(a, "-")
		switch {
		case strings.HasPrefix(a, "-cluster-port=") && a != "-cluster-port=0":
			cluster = true
		case strings.HasPrefix(a, "-route-secret="):
			secret = strings.TrimPrefix(a, "-route-secret=")
		case strings.HasPrefix(a, "-routes="):
			if strings.Contains(a, "@") {
				t.Errorf("%s: %s carries credentials in argv", who, a)
			}
		}
	}
	if cluster && secret != mount+"/route.secret" {
		t.Errorf("%s: a route listener with -route-secret=%q, want %s/route.secret (the broker's share): routes must authenticate", who, secret, mount)
	}
	if !cluster && secret != "" {
		t.Errorf("%s: -route-secret without a cluster", who)
	}
}
