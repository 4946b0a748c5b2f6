//! Audio in and out: what the peer sends (a sine tone or a WAV file, as 20 ms
//! Opus frames at 48 kHz mono) and what it measures in what it receives
//! (level and dominant frequency), plus the WAV reader and writer.
//!
//! The WAV reader takes files from the user: it returns a typed error for
//! anything it does not understand and never panics (property-tested).

use std::f64::consts::PI;

/// Opus and WebRTC run at 48 kHz; one frame is 20 ms.
pub const SAMPLE_RATE: u32 = 48_000;
pub const FRAME_SAMPLES: usize = 960;

/// Why a WAV file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    /// No `RIFF....WAVE` header.
    #[error("not a WAV file (no RIFF/WAVE header)")]
    NotWav,
    /// A chunk runs past the end of the file, or `fmt ` or `data` is missing.
    #[error("truncated or incomplete WAV file")]
    Truncated,
    /// Not 16-bit PCM, or not 1 or 2 channels, or a zero sample rate.
    #[error("unsupported WAV format: {0} (need 16-bit PCM, mono or stereo)")]
    Unsupported(String),
}

/// Mono 16-bit samples at [`SAMPLE_RATE`], from a WAV file's bytes: stereo
/// is mixed down, other rates are resampled (linear interpolation: enough for
/// test signals and speech).
pub fn read_wav(bytes: &[u8]) -> Result<Vec<i16>, WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWav);
    }
    let mut pos = 12;
    let mut format = None;
    let mut data = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
        let start = pos + 8;
        let end = start.checked_add(len).ok_or(WavError::Truncated)?;
        // A data chunk cut short (a recording that was interrupted) is still read.
        let body = &bytes[start..end.min(bytes.len())];
        match id {
            b"fmt " => {
                if body.len() < 16 {
                    return Err(WavError::Truncated);
                }
                let tag = u16::from_le_bytes([body[0], body[1]]);
                let channels = u16::from_le_bytes([body[2], body[3]]);
                let rate = u32::from_le_bytes(body[4..8].try_into().expect("4 bytes"));
                let bits = u16::from_le_bytes([body[14], body[15]]);
                // 0xFFFE is WAVE_FORMAT_EXTENSIBLE, which ffmpeg and sox write for PCM too.
                if !(tag == 1 || tag == 0xFFFE) || bits != 16 {
                    return Err(WavError::Unsupported(format!("format {tag}, {bits} bits")));
                }
                if !(1..=2).contains(&channels) || rate == 0 {
                    return Err(WavError::Unsupported(format!(
                        "{channels} channels at {rate} Hz"
                    )));
                }
                format = Some((channels as usize, rate));
            }
            b"data" => data = Some(body),
            _ => {}
        }
        if data.is_some() && format.is_some() {
            break;
        }
        // Chunks are padded to an even length.
        pos = end.saturating_add(len & 1);
    }
    let ((channels, rate), data) = format.zip(data).ok_or(WavError::Truncated)?;
    let frames: Vec<i16> = data
        .chunks_exact(2 * channels)
        .map(|f| {
            let sum: i32 = f
                .chunks_exact(2)
                .map(|s| i32::from(i16::from_le_bytes([s[0], s[1]])))
                .sum();
            (sum / channels as i32) as i16
        })
        .collect();
    Ok(resample(&frames, rate))
}

fn resample(input: &[i16], rate: u32) -> Vec<i16> {
    if rate == SAMPLE_RATE || input.is_empty() {
        return input.to_vec();
    }
    let out_len = (input.len() as u64 * u64::from(SAMPLE_RATE) / u64::from(rate)) as usize;
    let step = f64::from(rate) / f64::from(SAMPLE_RATE);
    (0..out_len)
        .map(|i| {
            let x = i as f64 * step;
            let j = x as usize;
            let a = f64::from(input[j.min(input.len() - 1)]);
            let b = f64::from(input[(j + 1).min(input.len() - 1)]);
            (a + (b - a) * (x - j as f64)) as i16
        })
        .collect()
}

/// A WAV file (16-bit PCM, mono, 48 kHz) holding `samples`.
pub fn wav_bytes(samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&(SAMPLE_RATE * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// What to send.
#[derive(Debug, Clone)]
pub enum Source {
    /// A sine tone of this frequency (Hz), at about -12 dBFS.
    Tone(f64),
    /// These samples (48 kHz mono), looped.
    Samples(Vec<i16>),
    /// Nothing: silence.
    Silence,
}

/// Produces one 20 ms frame after another from a [`Source`] and encodes it.
pub struct Sender {
    source: Source,
    pos: usize,
    encoder: opus::Encoder,
}

impl Sender {
    pub fn new(source: Source) -> Result<Sender, opus::Error> {
        let encoder =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        Ok(Sender {
            source,
            pos: 0,
            encoder,
        })
    }

    /// The next frame's samples.
    pub fn next_pcm(&mut self) -> [i16; FRAME_SAMPLES] {
        let mut frame = [0i16; FRAME_SAMPLES];
        match &self.source {
            Source::Tone(hz) => {
                for (i, s) in frame.iter_mut().enumerate() {
                    let t = (self.pos + i) as f64 / f64::from(SAMPLE_RATE);
                    *s = ((2.0 * PI * hz * t).sin() * 8192.0) as i16;
                }
                // Keep the phase counter small; wrap on whole seconds.
                self.pos = (self.pos + FRAME_SAMPLES) % (SAMPLE_RATE as usize * 100);
            }
            Source::Samples(samples) if !samples.is_empty() => {
                for s in frame.iter_mut() {
                    *s = samples[self.pos % samples.len()];
                    self.pos = (self.pos + 1) % samples.len();
                }
            }
            Source::Samples(_) | Source::Silence => {}
        }
        frame
    }

    /// The next frame, Opus-encoded.
    pub fn next_packet(&mut self) -> Vec<u8> {
        let pcm = self.next_pcm();
        let mut out = vec![0u8; 1500];
        match self.encoder.encode(&pcm, &mut out) {
            Ok(n) => out.truncate(n),
            // A valid frame always encodes; send a DTX-like empty frame otherwise.
            Err(_) => out.clear(),
        }
        out
    }
}

/// Decodes what one remote sends and measures it.
pub struct Receiver {
    decoder: opus::Decoder,
    /// The most recent samples, for the frequency estimate (about 0.5 s).
    recent: std::collections::VecDeque<i16>,
    /// Everything decoded, when recording.
    pub recording: Option<Vec<i16>>,
    /// Highest frame RMS seen, and the latest (0.0..=1.0 of full scale).
    pub peak_level: f64,
    pub level: f64,
    pub decode_errors: u64,
}

const RECENT: usize = SAMPLE_RATE as usize / 2;
/// A recording stops growing at 10 minutes (57 MB), so a long run cannot eat memory.
const MAX_RECORDING: usize = SAMPLE_RATE as usize * 600;

impl Receiver {
    pub fn new(record: bool) -> Result<Receiver, opus::Error> {
        Ok(Receiver {
            decoder: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?,
            recent: std::collections::VecDeque::with_capacity(RECENT),
            recording: record.then(Vec::new),
            peak_level: 0.0,
            level: 0.0,
            decode_errors: 0,
        })
    }

    /// One Opus packet from the remote.
    pub fn push_packet(&mut self, packet: &[u8]) {
        let mut pcm = [0i16; 5760];
        let n = match self.decoder.decode(packet, &mut pcm, false) {
            Ok(n) => n,
            Err(_) => {
                self.decode_errors += 1;
                return;
            }
        };
        let pcm = &pcm[..n];
        self.level = rms(pcm);
        self.peak_level = self.peak_level.max(self.level);
        for &s in pcm {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(s);
        }
        if let Some(rec) = &mut self.recording
            && rec.len() + n <= MAX_RECORDING
        {
            rec.extend_from_slice(pcm);
        }
    }

    /// The dominant frequency of the last half second, if there is sound.
    pub fn dominant_frequency(&self) -> Option<f64> {
        let samples: Vec<i16> = self.recent.iter().copied().collect();
        dominant_frequency(&samples)
    }
}

/// RMS of `pcm` as a fraction of full scale.
pub fn rms(pcm: &[i16]) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    let sum: f64 = pcm.iter().map(|&s| (f64::from(s) / 32768.0).powi(2)).sum();
    (sum / pcm.len() as f64).sqrt()
}

/// Goertzel power of `samples` at `hz`.
fn goertzel(samples: &[i16], hz: f64) -> f64 {
    let w = 2.0 * PI * hz / f64::from(SAMPLE_RATE);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// The strongest frequency between 50 Hz and 4 kHz: a coarse scan in 10 Hz
/// steps, refined to 1 Hz. `None` for near-silence.
pub fn dominant_frequency(samples: &[i16]) -> Option<f64> {
    if samples.len() < FRAME_SAMPLES || rms(samples) < 0.005 {
        return None;
    }
    let best = |range: &mut dyn Iterator<Item = f64>| {
        range
            .map(|hz| (hz, goertzel(samples, hz)))
            .fold((0.0, f64::MIN), |a, b| if b.1 > a.1 { b } else { a })
            .0
    };
    let coarse = best(&mut (5..=400).map(|i| f64::from(i) * 10.0));
    Some(best(&mut (-10..=10).map(|d| coarse + f64::from(d))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_tone_survives_opus_and_is_found() {
        let mut tx = Sender::new(Source::Tone(440.0)).unwrap();
        let mut rx = Receiver::new(true).unwrap();
        for _ in 0..50 {
            rx.push_packet(&tx.next_packet());
        }
        let hz = rx.dominant_frequency().unwrap();
        assert!((hz - 440.0).abs() <= 3.0, "{hz}");
        assert!(rx.peak_level > 0.1, "{}", rx.peak_level);
        assert_eq!(
            rx.recording.as_ref().map(Vec::len),
            Some(50 * FRAME_SAMPLES)
        );
    }

    #[test]
    fn silence_has_no_frequency() {
        let mut tx = Sender::new(Source::Silence).unwrap();
        let mut rx = Receiver::new(false).unwrap();
        for _ in 0..30 {
            rx.push_packet(&tx.next_packet());
        }
        assert_eq!(rx.dominant_frequency(), None);
        assert!(rx.peak_level < 0.001);
    }

    #[test]
    fn wav_round_trips_and_resamples() {
        let samples: Vec<i16> = (0..4800).map(|i| (i % 100) as i16 * 100).collect();
        assert_eq!(read_wav(&wav_bytes(&samples)), Ok(samples.clone()));
        // The same file claiming 24 kHz stereo: half as many frames, doubled by resampling.
        let mut stereo = wav_bytes(&samples);
        stereo[22] = 2;
        stereo[24..28].copy_from_slice(&24_000u32.to_le_bytes());
        assert_eq!(read_wav(&stereo).map(|s| s.len()), Ok(4800));
        let mut eight_bit = wav_bytes(&samples);
        eight_bit[34] = 8;
        assert!(matches!(
            read_wav(&eight_bit),
            Err(WavError::Unsupported(_))
        ));
        assert_eq!(read_wav(b"RIFF\0\0\0\0WAVE"), Err(WavError::Truncated));
        assert_eq!(read_wav(b"hello"), Err(WavError::NotWav));
    }

    proptest! {
        #[test]
        fn read_wav_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = read_wav(&bytes);
        }

        #[test]
        fn read_wav_never_panics_on_damaged_files(
            cut in 0usize..200, flip in 0usize..200, value in any::<u8>(),
        ) {
            let mut bytes = wav_bytes(&(0..80).collect::<Vec<i16>>());
            let len = bytes.len();
            bytes[flip % len] = value;
            bytes.truncate(cut.min(len));
            let _ = read_wav(&bytes);
        }
    }

    proptest! {
        // Each case is a few million multiplications, slow unoptimised.
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn the_dominant_frequency_of_a_clean_tone_is_its_frequency(hz in 100.0f64..3000.0) {
            let samples: Vec<i16> = (0..RECENT)
                .map(|i| ((2.0 * PI * hz * i as f64 / 48_000.0).sin() * 8000.0) as i16)
                .collect();
            let found = dominant_frequency(&samples).unwrap();
            prop_assert!((found - hz).abs() <= 1.5, "{} vs {}", found, hz);
        }
    }
}
