# The static multicall binary, with one symlink per service name.
# Built with nixpkgs' rustPlatform; the flake passes pkgsStatic's for a
# fully static binary (musl), as the release ships.
{ lib, rustPlatform, cmake, pkg-config, stdenv, src, version }:

rustPlatform.buildRustPackage {
  pname = "call-coach";
  inherit version src;
  cargoLock.lockFile = ../Cargo.lock;

  # whisper.cpp is built by whisper-rs-sys with cmake.
  nativeBuildInputs = [ cmake pkg-config ];

  # Portable CPU code: no -march=native; on x86-64 the x86-64-v3 features
  # every current server has. Pre-generated bindings: no libclang.
  env = {
    GGML_NATIVE = "OFF";
    WHISPER_DONT_GENERATE_BINDINGS = "1";
  } // lib.optionalAttrs stdenv.hostPlatform.isx86_64 {
    GGML_AVX = "ON";
    GGML_AVX2 = "ON";
    GGML_FMA = "ON";
    GGML_F16C = "ON";
  };

  # The integration tests need the Whisper model, the Spanish prompts and
  # Chromium (scripts/test.sh); in the sandbox the unit tests run.
  cargoTestFlags = [ "--lib" ];

  postInstall = ''
    for name in stt rtp2ws relay orchestrator ari-coach; do
      ln -s call-coach "$out/bin/$name"
    done
  '';

  meta = {
    description = "Real-time coaching for contact-centre agents on Asterisk, on-prem";
    license = lib.licenses.agpl3Plus;
    mainProgram = "call-coach";
    platforms = [ "x86_64-linux" "aarch64-linux" ];
  };
}
