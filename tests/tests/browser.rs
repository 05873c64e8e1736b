//! The files prof-bpf writes, opened where people open them: the speedscope file in the real
//! speedscope app (the npm package, installed by scripts/setup into tests/browser) and the
//! flamegraph SVG, both in headless Chromium. Each gets a screenshot that must not be blank; the
//! speedscope app must import the file without errors and list the fixture's functions.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use prof_bpf_tests::*;

/// Headless Chromium (Debian's `chromium` package, installed by scripts/setup).
fn chromium() -> PathBuf {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file());
    found.expect("chromium is not installed: run scripts/setup (apt-get install chromium)")
}

/// The speedscope app's page.
fn speedscope_index() -> PathBuf {
    let index = root().join("tests/browser/node_modules/speedscope/dist/release/index.html");
    assert!(
        index.is_file(),
        "{} is missing: run scripts/setup (npm install in tests/browser)",
        index.display()
    );
    index
}

/// Runs headless Chromium on `url` with `action` (`--screenshot=...` or `--dump-dom`); returns
/// stdout and the browser's log (console messages included).
fn browse(dir: &Path, url: &str, action: &str) -> (String, String) {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox", // the suite runs as root
            "--disable-gpu",
            "--allow-file-access-from-files",
            // Tall: the sandwich table only renders the rows that fit, and a recording that
            // starts with the interpreter holds a few dozen import-time functions too.
            "--window-size=1280,2400",
            "--virtual-time-budget=10000",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium-profile").display()
        ))
        .arg(action)
        .arg(url)
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Asserts the PNG shows something: a good share of pixels differ from the background (the
/// most common color) and there are several colors.
fn assert_not_blank(png_path: &Path) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).expect("the screenshot was written"),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| &p[..3.min(channels)])
        .collect();
    let mut colors: HashMap<&[u8], usize> = HashMap::new();
    for p in &pixels {
        *colors.entry(p).or_default() += 1;
    }
    let background = colors.values().copied().max().unwrap_or(0);
    let drawn = 100.0 * (pixels.len() - background) as f64 / pixels.len() as f64;
    eprintln!(
        "{}: {}x{}, {} colors, {drawn:.1}% of pixels off the background",
        png_path.display(),
        info.width,
        info.height,
        colors.len()
    );
    assert!(
        colors.len() >= 8 && drawn >= 2.0,
        "{} looks blank: {} colors, {drawn:.1}% drawn",
        png_path.display(),
        colors.len()
    );
}

/// Records split.py into `format`; returns the file. The recording is checked complete by its
/// summary (the formats' contents are checked in record.rs).
fn record(dir: &Path, format: &str, file: &str) -> PathBuf {
    let out_path = dir.join(file);
    let result = record_fixture(
        &["-r", RATE, "-f", format],
        &out_path,
        &python("3.12"),
        "split.py",
        &["1"],
    );
    let measured = measured_split(&String::from_utf8_lossy(&result.stdout));
    let s = Summary::parse(&String::from_utf8_lossy(&result.stderr));
    // As every recording of a running interpreter can (`check_complete` allows it too).
    let expected = [LAUNCH_FAULTS, call_races(s.samples)];
    check_errors(&format!("browser_{format}"), &s, &expected);
    let implied = s.rate as f64 * (measured.0 + measured.1);
    assert!(
        s.samples as f64 >= completeness_floor(implied) * implied,
        "{}",
        s.text
    );
    out_path
}

/// The file in base64, by coreutils' `base64` (one line).
fn base64(path: &Path) -> String {
    let out = Command::new("base64")
        .args(["-w", "0"])
        .arg(path)
        .output()
        .expect("running base64 (coreutils)");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn speedscope_app_opens_the_recording() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("browser_speedscope");
    let profile = record(&dir, "speedscope", "split.json");
    // What the speedscope CLI does: a script that hands the file to the app, named in the URL.
    let script = dir.join("load.js");
    std::fs::write(
        &script,
        format!(
            "speedscope.loadFileFromBase64(\"split.json\", \"{}\")",
            base64(&profile)
        ),
    )
    .unwrap();
    let page = format!(
        "file://{}#localProfilePath={}",
        speedscope_index().display(),
        script.display()
    );

    // The sandwich view lists every function in a table: the fixture's must be there.
    let (dom, log) = browse(&dir, &format!("{page}&view=sandwich"), "--dump-dom");
    assert!(
        log.contains("Importing as speedscope json file"),
        "speedscope did not import the file:\n{log}"
    );
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE:")).collect();
    let errors: Vec<&&str> = console
        .iter()
        .filter(|l| {
            ["Error", "error", "Uncaught", "Failed"]
                .iter()
                .any(|e| l.contains(e))
        })
        .filter(|l| !l.contains("WebGL") && !l.contains("GL Driver"))
        .collect();
    assert!(errors.is_empty(), "speedscope console errors: {errors:#?}");
    for name in ["heavy", "light", "burn", "main", "&lt;module&gt;"] {
        assert!(
            dom.contains(&format!(">{name}<")),
            "{name} is not in speedscope's function list"
        );
    }

    // The flame chart (time-ordered view) rendered: a screenshot that is not blank.
    let shot = dir.join("speedscope.png");
    browse(&dir, &page, &format!("--screenshot={}", shot.display()));
    assert_not_blank(&shot);
}

#[test]
fn flamegraph_svg_renders() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("browser_flamegraph");
    let svg = record(&dir, "flamegraph", "split.svg");
    let url = format!("file://{}", svg.display());
    let (dom, _) = browse(&dir, &url, "--dump-dom");
    for name in ["heavy", "light", "burn"] {
        assert!(dom.contains(name), "{name} is not in the rendered SVG");
    }
    let shot = dir.join("flamegraph.png");
    browse(&dir, &url, &format!("--screenshot={}", shot.display()));
    assert_not_blank(&shot);
}
