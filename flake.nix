{
  description = "meterflow: energy-meter batches from Kafka to exact-schema Parquet on S3, with its Kubernetes bundle";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    crane.url = "github:ipetkov/crane";
    flake-utils.url = "github:numtide/flake-utils";
    advisory-db = {
      url = "github:rustsec/advisory-db";
      flake = false;
    };
  };

  outputs =
    { self
    , nixpkgs
    , crane
    , flake-utils
    , advisory-db
    }:
    flake-utils.lib.eachSystem [ "x86_64-linux" "aarch64-linux" ] (system:
    let
      pkgs = import nixpkgs { inherit system; };
      craneLib = crane.mkLib pkgs;
      meterflow = import ./nix/package.nix { inherit pkgs craneLib; };
      image = import ./nix/image.nix {
        inherit pkgs;
        meterflow = meterflow.package;
      };
      # OpenTofu (MPL) rather than Terraform (BSL, unfree in nixpkgs): same HCL, same
      # providers, no allowUnfree needed. `terraform` works the same without Nix.
      tools = [ pkgs.opentofu pkgs.kubectl pkgs.minikube ];
      scripts = import ./nix/apps.nix { inherit pkgs tools image; };
    in
    {
      packages = {
        default = meterflow.package;
        inherit image;
      };

      apps = {
        default = flake-utils.lib.mkApp { drv = meterflow.package; };
        up = flake-utils.lib.mkApp { drv = scripts.up; };
        down = flake-utils.lib.mkApp { drv = scripts.down; };
      };

      checks =
        meterflow.checks
        // {
          audit = craneLib.cargoAudit {
            inherit (meterflow) src;
            inherit advisory-db;
          };
          # nixpkgs-fmt: the formatter scripts/check-infra also runs (crates.io) offline.
          nix-fmt = pkgs.runCommand "nix-fmt" { nativeBuildInputs = [ pkgs.nixpkgs-fmt ]; } ''
            nixpkgs-fmt --check ${./flake.nix} ${./nix}
            touch $out
          '';
          terraform-fmt = pkgs.runCommand "terraform-fmt" { nativeBuildInputs = [ pkgs.opentofu ]; } ''
            tofu fmt -check -recursive ${./terraform}
            touch $out
          '';
        };

      devShells.default = craneLib.devShell {
        checks = self.checks.${system};
        packages = tools ++ [ pkgs.nixpkgs-fmt ];
      };

      formatter = pkgs.nixpkgs-fmt;
    });
}
