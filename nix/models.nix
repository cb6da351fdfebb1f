# Whisper models as fixed-output derivations: the official GGML files, checked
# with the SHA-1 the whisper.cpp project publishes (the only hash it gives;
# src/stt/model/fetch.rs pins the same). Each output holds ggml-<size>.bin
# (f16, COMPUTE_TYPE=float16) and ggml-<size>-q8_0.bin, re-quantized by
# `call-coach model import` for stt's default COMPUTE_TYPE=int8.
{ fetchurl, runCommand, call-coach }:

let
  model = size: hash:
    let
      file = fetchurl {
        url = "https://huggingface.co/ggerganov/whisper.cpp/resolve/main/ggml-${size}.bin";
        inherit hash;
      };
    in
    runCommand "whisper-model-${size}" { nativeBuildInputs = [ call-coach ]; } ''
      mkdir -p $out
      ln -s ${file} $out/ggml-${size}.bin
      MODEL_DIR=$out STATE_DIR=$TMPDIR call-coach model import ${file} --name ${size} --quant q8_0
    '';
in
{
  model-tiny = model "tiny" "sha1-vVd6ETqGREXUwpmIXgy5fUupK18=";
  model-base = model "base" "sha1-RlcHRp/zo3orm42PifL5necpnaw=";
  model-small = model "small" "sha1-VTVmRcKzYalp39DvLFpQ1TCv2NU=";
  model-medium = model "medium" "sha1-/ZcntuEhfC9hT5tphFXE/9gkY7Q=";
}
