// A minimal OpenTelemetry Collector for prof-bpf's tests of OTLP profiles: the OTLP receiver
// (gRPC and HTTP), the debug and OTLP exporters, and profbpffile (fileexporter.go), which writes
// each profiles request it receives to a file for the tests to decode.
//
// scripts/setup-collector builds it from Debian's golang-opentelemetry-collector-dev (0.141) in
// GOPATH mode, without modules or network. Run it with tests/collector/config.yaml:
//
//	otelcol-prof-bpf --config tests/collector/config.yaml --feature-gates=service.profilesSupport
package main

import (
	"log"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/confmap/provider/yamlprovider"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/exporter/debugexporter"
	"go.opentelemetry.io/collector/exporter/otlpexporter"
	"go.opentelemetry.io/collector/otelcol"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/service/telemetry/otelconftelemetry"
)

// The Debian package version the collector was built from; set by scripts/setup-collector
// (-ldflags -X main.version=...).
var version = "unknown"

func components() (otelcol.Factories, error) {
	receivers, err := otelcol.MakeFactoryMap[receiver.Factory](otlpreceiver.NewFactory())
	if err != nil {
		return otelcol.Factories{}, err
	}
	exporters, err := otelcol.MakeFactoryMap[exporter.Factory](
		debugexporter.NewFactory(),
		otlpexporter.NewFactory(),
		newFileExporterFactory(),
	)
	if err != nil {
		return otelcol.Factories{}, err
	}
	return otelcol.Factories{
		Receivers: receivers,
		Exporters: exporters,
		// The service does not start without a telemetry factory (its own logs and metrics).
		Telemetry: otelconftelemetry.NewFactory(),
	}, nil
}

func main() {
	settings := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{
			Command:     "otelcol-prof-bpf",
			Description: "OpenTelemetry Collector for prof-bpf's OTLP profiles tests",
			Version:     version,
		},
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				// --config takes a file path (file: is the default), env:VAR or yaml:INLINE;
				// ${env:VAR:-default} expands inside the file.
				ProviderFactories: []confmap.ProviderFactory{
					fileprovider.NewFactory(),
					envprovider.NewFactory(),
					yamlprovider.NewFactory(),
				},
			},
		},
	}
	if err := otelcol.NewCommand(settings).Execute(); err != nil {
		log.Fatal(err)
	}
}
