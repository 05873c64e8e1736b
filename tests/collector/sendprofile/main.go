// sendprofile sends one small, fixed OTLP profile to a collector, over gRPC or HTTP, to check the
// test collector (tests/collector) before prof-bpf has an OTLP writer of its own. Built by
// scripts/setup-collector next to the collector.
//
//	sendprofile -grpc 127.0.0.1:4317 [-gzip]
//	sendprofile -http http://127.0.0.1:4318 [-json] [-gzip]
//	sendprofile ... -o sent.pb   # also write the request's protobuf bytes
//
// The profile: one resource (service.name sendprofile), one scope, one CPU profile with two
// stacks of Python-like functions in app.py, as prof-bpf would send them.
package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpcgzip "google.golang.org/grpc/encoding/gzip"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pprofile"
	"go.opentelemetry.io/collector/pdata/pprofile/pprofileotlp"
)

// profile builds the request. Every dictionary table starts with its zero value at index 0, as
// the protocol requires: index 0 means "none" (empty string, no mapping, no link, ...).
func profile() pprofile.Profiles {
	pd := pprofile.NewProfiles()
	dict := pd.Dictionary()
	strings := dict.StringTable()
	str := func(s string) int32 { strings.Append(s); return int32(strings.Len() - 1) }
	str("")
	dict.MappingTable().AppendEmpty()
	dict.LocationTable().AppendEmpty()
	dict.FunctionTable().AppendEmpty()
	dict.LinkTable().AppendEmpty()
	dict.AttributeTable().AppendEmpty()
	dict.StackTable().AppendEmpty()

	file := str("app.py")
	// A Python function and the location of one of its lines; returns the location's index.
	location := func(name string, firstLine, line int64) int32 {
		f := dict.FunctionTable().AppendEmpty()
		f.SetNameStrindex(str(name))
		f.SetFilenameStrindex(file)
		f.SetStartLine(firstLine)
		loc := dict.LocationTable().AppendEmpty()
		l := loc.Lines().AppendEmpty()
		l.SetFunctionIndex(int32(dict.FunctionTable().Len() - 1))
		l.SetLine(line)
		return int32(dict.LocationTable().Len() - 1)
	}
	mainLoc, workLoc, idleLoc := location("main", 10, 12), location("work", 3, 5), location("idle", 7, 8)
	// A stack lists its locations leaf first.
	stack := func(locations ...int32) int32 {
		s := dict.StackTable().AppendEmpty()
		s.LocationIndices().FromRaw(locations)
		return int32(dict.StackTable().Len() - 1)
	}

	rp := pd.ResourceProfiles().AppendEmpty()
	rp.Resource().Attributes().PutStr("service.name", "sendprofile")
	rp.Resource().Attributes().PutInt("process.pid", int64(os.Getpid()))
	sp := rp.ScopeProfiles().AppendEmpty()
	sp.Scope().SetName("prof-bpf-test")
	p := sp.Profiles().AppendEmpty()
	p.SampleType().SetTypeStrindex(str("samples"))
	p.SampleType().SetUnitStrindex(str("count"))
	p.PeriodType().SetTypeStrindex(str("cpu"))
	p.PeriodType().SetUnitStrindex(str("nanoseconds"))
	p.SetPeriod(10_000_000) // 100 Hz
	now := time.Now()
	p.SetTime(pcommon.NewTimestampFromTime(now.Add(-time.Second)))
	p.SetDurationNano(uint64(time.Second))
	var id pprofile.ProfileID
	copy(id[:], "prof-bpf-profile")
	p.SetProfileID(id)
	for _, s := range []struct {
		stack int32
		count int64
	}{{stack(workLoc, mainLoc), 70}, {stack(idleLoc, mainLoc), 30}} {
		sample := p.Samples().AppendEmpty()
		sample.SetStackIndex(s.stack)
		sample.Values().Append(s.count)
	}
	return pd
}

func main() {
	grpcAddr := flag.String("grpc", "", "send over gRPC to `HOST:PORT`")
	httpURL := flag.String("http", "", "send over HTTP to `URL` (its /v1development/profiles)")
	asJSON := flag.Bool("json", false, "HTTP: send JSON instead of protobuf")
	gzipped := flag.Bool("gzip", false, "gzip the request (HTTP: the body)")
	out := flag.String("o", "", "also write the request's protobuf bytes to `FILE`")
	flag.Parse()
	if (*grpcAddr == "") == (*httpURL == "") {
		log.Fatal("sendprofile: give one of -grpc HOST:PORT or -http URL")
	}

	req := pprofileotlp.NewExportRequestFromProfiles(profile())
	if *out != "" {
		data, err := req.MarshalProto()
		if err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(*out, data, 0o644); err != nil {
			log.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if *grpcAddr != "" {
		conn, err := grpc.NewClient(*grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			log.Fatal(err)
		}
		defer conn.Close()
		var opts []grpc.CallOption
		if *gzipped {
			opts = append(opts, grpc.UseCompressor(grpcgzip.Name))
		}
		if _, err := pprofileotlp.NewGRPCClient(conn).Export(ctx, req, opts...); err != nil {
			log.Fatalf("sendprofile: gRPC export: %v", err)
		}
		fmt.Println("sendprofile: sent over gRPC to", *grpcAddr)
		return
	}

	body, contentType := []byte(nil), "application/x-protobuf"
	var err error
	if *asJSON {
		body, err = req.MarshalJSON()
		contentType = "application/json"
	} else {
		body, err = req.MarshalProto()
	}
	if err != nil {
		log.Fatal(err)
	}
	if *gzipped {
		var buf bytes.Buffer
		w := gzip.NewWriter(&buf)
		w.Write(body)
		w.Close()
		body = buf.Bytes()
	}
	url := *httpURL + "/v1development/profiles"
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		log.Fatal(err)
	}
	hreq.Header.Set("Content-Type", contentType)
	if *gzipped {
		hreq.Header.Set("Content-Encoding", "gzip")
	}
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		log.Fatalf("sendprofile: HTTP export: %v", err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		log.Fatalf("sendprofile: %s answered %s: %q", url, resp.Status, answer)
	}
	fmt.Printf("sendprofile: sent over HTTP to %s (%s, %d bytes; answer %s, %d bytes)\n",
		url, contentType, len(body), resp.Header.Get("Content-Type"), len(answer))
}
