//! The flavours of Python zygote: what each has imported before it forks.

/// Which warm interpreter a Python process forks from: the plain one, one that has already
/// imported the scientific stack (for code that mentions it: importing numpy and pandas costs
/// ~0.3 s, forking an interpreter that holds them ~3 ms more than a plain one), or one that
/// has imported ipykernel (~0.6 s of a kernel's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Plain = 0,
    Scientific = 1,
    Kernel = 2,
}

impl Flavor {
    pub fn preload(self) -> &'static [&'static str] {
        match self {
            Flavor::Plain => &[],
            Flavor::Scientific => &["numpy", "pandas", "matplotlib.pyplot"],
            Flavor::Kernel => &[
                "ipykernel.kernelapp",
                "ipykernel.ipkernel",
                "numpy",
                "pandas",
                "matplotlib.pyplot",
            ],
        }
    }

    /// What the preloaded modules read at import. Matplotlib fixes its backend then (headless
    /// for programs, inline for kernels: what each would choose itself) and reads its config
    /// and font cache from a directory that must not be the host's `$HOME`: a private one in
    /// the data dir. Each fork finds its own afresh under the sandbox's home (`zygote.py`).
    pub fn env(self, config: &crate::config::Config) -> Vec<(&'static str, String)> {
        let backend = match self {
            Flavor::Plain => return Vec::new(),
            Flavor::Scientific => "Agg",
            Flavor::Kernel => crate::context::INLINE_BACKEND,
        };
        let config_dir = config.zygote_dir().join("matplotlib");
        vec![
            ("MPLBACKEND", backend.into()),
            ("MPLCONFIGDIR", config_dir.display().to_string()),
        ]
    }

    /// Code that mentions a package the scientific zygote preloads forks from it.
    pub fn for_code(code: &str) -> Flavor {
        let mentions = |module: &&str| code.contains(module.split('.').next().unwrap_or(module));
        if Flavor::Scientific.preload().iter().any(mentions) {
            Flavor::Scientific
        } else {
            Flavor::Plain
        }
    }
}
