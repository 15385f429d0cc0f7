package tracing

import (
	"errors"
	"testing"
)

func TestTracesURL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"},
		{"http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"},
		{"https://otel.example:443/custom/traces", "https://otel.example:443/custom/traces"},
		{"127.0.0.1:4318", ""},
		{"grpc://127.0.0.1:4317", ""},
		{"http://", ""},
		{"::", ""},
	} {
		got, err := TracesURL(tc.in)
		if tc.want == "" {
			if !errors.Is(err, ErrConfig) {
				t.Errorf("TracesURL(%q) = %q, %v; want ErrConfig", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("TracesURL(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestEndpointFromEnv(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{}, ""},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}, "http://c:4318/v1/traces"},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/x"}, "http://t:1/x"},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, ""},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, ""},
	} {
		for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER"} {
			t.Setenv(k, tc.env[k])
		}
		if got := EndpointFromEnv(); got != tc.want {
			t.Errorf("EndpointFromEnv() with %v = %q, want %q", tc.env, got, tc.want)
		}
	}
	if _, err := New(Config{URL: "ftp://x"}); !errors.Is(err, ErrConfig) {
		t.Errorf("New with an ftp URL: %v", err)
	}
	if _, err := New(Config{URL: "http://127.0.0.1:1", Attributes: []string{"odd"}}); !errors.Is(err, ErrConfig) {
		t.Errorf("New with odd attributes: %v", err)
	}
}
