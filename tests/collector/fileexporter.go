package main

// profbpffile: an exporter that writes every profiles request it receives to a file of its own in
// a directory, so that tests decode exactly what the collector received instead of reading the
// debug exporter's log text. Each file is one ExportProfilesServiceRequest as pdata's
// pprofileotlp marshals it (protobuf), named profiles-000001.pb, profiles-000002.pb, ... in the
// order of arrival; it appears under its name only when complete (written as .tmp, renamed).
//
//	exporters:
//	  profbpffile:
//	    directory: /tmp/received   # created if missing; numbering continues after files there

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/exporter/exporterhelper"
	"go.opentelemetry.io/collector/exporter/exporterhelper/xexporterhelper"
	"go.opentelemetry.io/collector/exporter/xexporter"
	"go.opentelemetry.io/collector/pdata/pprofile"
	"go.opentelemetry.io/collector/pdata/pprofile/pprofileotlp"
)

var fileExporterType = component.MustNewType("profbpffile")

type fileExporterConfig struct {
	Directory string `mapstructure:"directory"`
}

// Validate is called by the collector when it loads the configuration.
func (c *fileExporterConfig) Validate() error {
	if c.Directory == "" {
		return errors.New("directory must be set")
	}
	return nil
}

// Profiles only: xexporter is the factory API that has the (development) profiles signal.
func newFileExporterFactory() exporter.Factory {
	return xexporter.NewFactory(
		fileExporterType,
		func() component.Config { return &fileExporterConfig{} },
		xexporter.WithProfiles(createFileExporter, component.StabilityLevelDevelopment),
	)
}

type fileExporter struct {
	dir  string
	mu   sync.Mutex
	next int // number of the last file written
}

func createFileExporter(ctx context.Context, set exporter.Settings, cfg component.Config) (xexporter.Profiles, error) {
	e := &fileExporter{dir: cfg.(*fileExporterConfig).Directory}
	// The helper adds the collector's own telemetry for the exporter; no queue and no retry, so
	// a request is on disk before the receiver answers the sender.
	return xexporterhelper.NewProfiles(ctx, set, cfg, e.write,
		exporterhelper.WithStart(e.start),
		exporterhelper.WithCapabilities(consumer.Capabilities{MutatesData: false}),
	)
}

func (e *fileExporter) start(context.Context, component.Host) error {
	if err := os.MkdirAll(e.dir, 0o755); err != nil {
		return err
	}
	// A collector restarted on the same directory overwrites nothing.
	names, _ := filepath.Glob(filepath.Join(e.dir, "profiles-*.pb"))
	for _, name := range names {
		var n int
		if _, err := fmt.Sscanf(filepath.Base(name), "profiles-%d.pb", &n); err == nil && n > e.next {
			e.next = n
		}
	}
	return nil
}

func (e *fileExporter) write(_ context.Context, pd pprofile.Profiles) error {
	data, err := pprofileotlp.NewExportRequestFromProfiles(pd).MarshalProto()
	if err != nil {
		return err
	}
	// One request at a time: numbers follow the order of arrival.
	e.mu.Lock()
	defer e.mu.Unlock()
	e.next++
	name := filepath.Join(e.dir, fmt.Sprintf("profiles-%06d.pb", e.next))
	if err := os.WriteFile(name+".tmp", data, 0o644); err != nil {
		return err
	}
	return os.Rename(name+".tmp", name)
}
