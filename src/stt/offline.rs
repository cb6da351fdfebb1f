//! `call-coach transcribe FILE...`: files through the same path as live
//! audio (resample, VAD segments, Whisper, filters), for checking a model
//! and measuring accuracy.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::engine::{Decoded, Engine, as_context, reject_reason};
use super::segmenter::{Request, Segmenter};
use crate::audio::wav::Wav;

/// A file as 16 kHz mono f32 (the first channel of a stereo file): 8 kHz
/// through the live path's upsampler, any other rate resampled.
pub fn load_16k(path: &Path) -> anyhow::Result<Vec<f32>> {
    let wav = Wav::read(path)?;
    crate::audio::resample::convert(&crate::audio::to_f32(&wav.channel(0)), wav.rate, 16_000)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn transcribe_files(
    s: &super::Settings,
    model_dir: &Path,
    files: &[PathBuf],
    whole: bool,
    context: Option<&str>,
) -> anyhow::Result<()> {
    let path = s.model_path(model_dir)?;
    let engine = Engine::load(&path, s.device == "cuda")?;
    s.check_prompt(&engine)?;
    let mut worker = engine.worker()?;
    let mut options = s.decode_options();
    // The text a live final ends with: its revision's, where finals are
    // revised (`--whole`: one greedy decode of the full window, as before).
    if whole {
        options.min_audio_ctx = 1500;
    } else if s.revise_finals {
        let careful = s.revision();
        options.beam = careful.beam;
        options.min_audio_ctx = careful.audio_ctx;
    }
    // A file that cannot be read is said and skipped; the others go on,
    // and the command fails at the end.
    let mut unreadable = 0;
    for file in files {
        let audio = match load_16k(file) {
            Ok(audio) => audio,
            Err(e) => {
                eprintln!("{e:#}");
                unreadable += 1;
                continue;
            }
        };
        let started = Instant::now();
        let mut texts = Vec::new();
        // Each segment with its start and end (ms).
        let segments: Vec<(Vec<f32>, u64, u64)> = if whole {
            let end = audio.len() as u64 / 16;
            vec![(audio.clone(), 0, end)]
        } else {
            // The live path's segmenter, partials and tentatives ignored.
            let mut seg = Segmenter::new(s.segmenter_config());
            let mut reqs = seg.push(&audio);
            reqs.extend(seg.finish());
            reqs.into_iter()
                .filter_map(|r| match r {
                    Request::Final(u, _) if !u.audio.is_empty() => {
                        tracing::debug!(start_ms = u.start_ms, end_ms = u.end_ms, "utterance");
                        Some((u.audio, u.start_ms, u.end_ms))
                    }
                    _ => None,
                })
                .collect()
        };
        // As a live stream: each segment with the previous final as
        // context (the first with `context`, as if said just before).
        let mut previous: Option<(String, u64)> = context.and_then(as_context).map(|c| (c, 0));
        for (segment, start_ms, end_ms) in segments {
            let options = match s.context_for(previous.as_ref(), start_ms) {
                Some(p) => options.with_context(p),
                None => options.clone(),
            };
            let decoded: Decoded = worker.transcribe_checked(&segment, &options, None).0?;
            tracing::debug!(text = %decoded.text, no_speech = decoded.no_speech_prob, "decoded");
            if reject_reason(&decoded, s.max_no_speech_prob).is_none() {
                previous = as_context(&decoded.text).map(|c| (c, end_ms));
                texts.push(decoded.text);
            }
        }
        let secs = audio.len() as f64 / 16_000.0;
        let took = started.elapsed().as_secs_f64();
        eprintln!(
            "{}: {secs:.1} s of audio in {took:.2} s (RTF {:.3})",
            file.display(),
            took / secs.max(1e-6)
        );
        println!("{}\t{}", file.display(), texts.join(" "));
    }
    if unreadable > 0 {
        anyhow::bail!(
            "{unreadable} of {} files could not be read (above)",
            files.len()
        );
    }
    Ok(())
}
