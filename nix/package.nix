# The meterflow binary with crane: dependencies built once (buildDepsOnly), then the crate;
# the same artifacts feed clippy, fmt and the test suite as flake checks.
{ pkgs
, craneLib
}:
let
  src = pkgs.lib.cleanSourceWith {
    src = ../.;
    # Rust sources plus the tests' own files (test images, fixtures).
    filter = path: type:
      (craneLib.filterCargoSources path type)
      || (builtins.match ".*/tests/.*" path != null);
  };

  commonArgs = {
    inherit src;
    strictDeps = true;
    # rdkafka builds librdkafka from source (feature cmake-build): nixpkgs' librdkafka is too
    # old for rdkafka-sys' dynamic linking. Its features here: ssl (OpenSSL, also for SASL
    # SCRAM/PLAIN, which need no cyrus-sasl) and libz; zstd comes bundled through zstd-sys.
    nativeBuildInputs = [ pkgs.pkg-config pkgs.cmake ];
    buildInputs = [ pkgs.openssl pkgs.zlib ];
  };

  cargoArtifacts = craneLib.buildDepsOnly commonArgs;

  package = craneLib.buildPackage (commonArgs
    // {
    inherit cargoArtifacts;
    # Integration tests need containers; they run in `checks.tests` without them
    # (skipped unless CI=true) and in the repository's scripts/test with them.
    doCheck = false;
    meta.mainProgram = "meterflow";
  });
in
{
  inherit src package;
  checks = {
    inherit package;
    clippy = craneLib.cargoClippy (commonArgs
      // {
      inherit cargoArtifacts;
      cargoClippyExtraArgs = "--all-targets -- --deny warnings";
    });
    fmt = craneLib.cargoFmt { inherit src; };
    tests = craneLib.cargoTest (commonArgs // { inherit cargoArtifacts; });
  };
}
