//! ELF and library discovery: what the kernel opens to `exec` the cell
//! program (its `#!` and ELF interpreters) and where its loader looks for
//! libraries (`DT_RUNPATH`).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::report::SandboxError;

/// The files the kernel opens for `exec` and the directories the loader
/// reads, found by inspecting the program.
#[derive(Debug, Default)]
pub(super) struct ProgramDeps {
    /// The program, its `#!` interpreters and ELF interpreters.
    pub(super) executables: Vec<PathBuf>,
    /// `DT_RUNPATH` / `DT_RPATH` directories.
    pub(super) library_dirs: Vec<PathBuf>,
}

/// The kernel follows at most this many `#!` interpreters
/// (`BINPRM_MAX_RECURSION`).
pub(super) const MAX_INTERPRETER_DEPTH: u32 = 4;

pub(super) fn inspect_program(path: &Path, depth: u32, deps: &mut ProgramDeps) -> Result<(), SandboxError> {
    let fail = |reason: String| SandboxError::Program {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut head = [0u8; 256];
    let n = read_at(&file, 0, &mut head).map_err(|e| fail(e.to_string()))?;
    let head = &head[..n];
    deps.executables.push(path.to_path_buf());

    if let Some(rest) = head.strip_prefix(b"#!") {
        if depth >= MAX_INTERPRETER_DEPTH {
            return Err(fail("too many nested #! interpreters".to_owned()));
        }
        let line = rest.split(|b| *b == b'\n').next().unwrap_or_default();
        let interpreter = line
            .split(|b| *b == b' ' || *b == b'\t')
            .find(|t| !t.is_empty())
            .ok_or_else(|| fail("empty #! line".to_owned()))?;
        let interpreter = Path::new(OsStr::from_bytes(interpreter));
        if !interpreter.is_absolute() {
            return Err(fail(format!(
                "the #! interpreter {} is not an absolute path",
                interpreter.display()
            )));
        }
        return inspect_program(interpreter, depth + 1, deps);
    }

    if head.len() < 64 || &head[..4] != b"\x7fELF" {
        return Err(fail("neither an ELF file nor a #! script".to_owned()));
    }
    if head[4] != 2 || head[5] != 1 {
        return Err(fail(
            "only 64-bit little-endian ELF programs are supported".to_owned(),
        ));
    }
    let elf = Elf64::parse(&file, head).map_err(fail)?;
    if let Some(interpreter) = elf.interpreter {
        // ELF interpreters are static: no interpreter or run path of their own.
        deps.executables.push(interpreter);
    }
    let origin = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    for entry in elf.run_paths {
        let expanded = match &origin {
            Some(origin) => {
                let o = origin.to_string_lossy();
                entry.replace("${ORIGIN}", &o).replace("$ORIGIN", &o)
            }
            None => continue,
        };
        if expanded.is_empty() || expanded.contains('$') {
            tracing::debug!(entry, "run path entry with an unsupported token ignored");
            continue;
        }
        let dir = PathBuf::from(expanded);
        if dir.is_dir() {
            deps.library_dirs.push(dir);
        }
    }
    Ok(())
}

pub(super) fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// What the sandbox needs from a 64-bit little-endian ELF file: its
/// `PT_INTERP` and its `DT_RUNPATH`/`DT_RPATH` entries.
#[derive(Debug, Default)]
pub(super) struct Elf64 {
    pub(super) interpreter: Option<PathBuf>,
    pub(super) run_paths: Vec<String>,
}

impl Elf64 {
    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NULL: u64 = 0;
    const DT_STRTAB: u64 = 5;
    const DT_STRSZ: u64 = 10;
    const DT_RPATH: u64 = 15;
    const DT_RUNPATH: u64 = 29;
    /// Bounds on what a sane program header table and dynamic section hold.
    const MAX_PHNUM: usize = 4096;
    const MAX_DYNAMIC: u64 = 1 << 20;
    const MAX_STRING: usize = 1 << 16;

    fn parse(file: &File, head: &[u8]) -> Result<Self, String> {
        let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));

        let phoff = u64_at(head, 0x20);
        let phentsize = usize::from(u16_at(head, 0x36));
        let phnum = usize::from(u16_at(head, 0x38));
        if phentsize < 56 || phnum > Self::MAX_PHNUM {
            return Err(format!(
                "unexpected ELF program header table ({phnum} entries of {phentsize} bytes)"
            ));
        }
        let mut table = vec![0u8; phnum * phentsize];
        if read_at(file, phoff, &mut table).map_err(|e| e.to_string())? != table.len() {
            return Err("truncated ELF program header table".to_owned());
        }

        let mut elf = Self::default();
        let mut loads = Vec::new();
        let mut dynamic = None;
        for ph in table.chunks_exact(phentsize) {
            let (p_type, offset, vaddr, filesz) =
                (u32_at(ph, 0), u64_at(ph, 8), u64_at(ph, 16), u64_at(ph, 32));
            match p_type {
                Self::PT_LOAD => loads.push((vaddr, offset, filesz)),
                Self::PT_DYNAMIC => dynamic = Some((offset, filesz)),
                Self::PT_INTERP => {
                    let s = read_c_string(file, offset, (filesz as usize).min(Self::MAX_STRING))?;
                    elf.interpreter = Some(PathBuf::from(OsStr::from_bytes(&s)));
                }
                _ => {}
            }
        }

        let Some((dyn_offset, dyn_size)) = dynamic else {
            return Ok(elf);
        };
        let mut entries = vec![0u8; dyn_size.min(Self::MAX_DYNAMIC) as usize];
        let n = read_at(file, dyn_offset, &mut entries).map_err(|e| e.to_string())?;
        let (mut strtab, mut strsz, mut paths) = (None, u64::MAX, Vec::new());
        for entry in entries[..n].chunks_exact(16) {
            let (tag, value) = (u64_at(entry, 0), u64_at(entry, 8));
            match tag {
                Self::DT_NULL => break,
                Self::DT_STRTAB => strtab = Some(value),
                Self::DT_STRSZ => strsz = value,
                Self::DT_RPATH | Self::DT_RUNPATH => paths.push(value),
                _ => {}
            }
        }
        if paths.is_empty() {
            return Ok(elf);
        }
        let strtab = strtab.ok_or("DT_RUNPATH without DT_STRTAB")?;
        // DT_STRTAB is a virtual address: find the file offset through PT_LOAD.
        let strtab_offset = loads
            .iter()
            .find(|(vaddr, _, filesz)| strtab >= *vaddr && strtab - vaddr < *filesz)
            .map(|(vaddr, offset, _)| strtab - vaddr + offset)
            .ok_or("DT_STRTAB outside every PT_LOAD segment")?;
        for string_offset in paths {
            if string_offset >= strsz {
                return Err("DT_RUNPATH outside the string table".to_owned());
            }
            let s = read_c_string(file, strtab_offset + string_offset, Self::MAX_STRING)?;
            let s = String::from_utf8_lossy(&s).into_owned();
            elf.run_paths
                .extend(s.split(':').filter(|p| !p.is_empty()).map(str::to_owned));
        }
        Ok(elf)
    }
}

pub(super) fn read_c_string(file: &File, offset: u64, max: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; max];
    let n = read_at(file, offset, &mut buf).map_err(|e| e.to_string())?;
    buf.truncate(n);
    match buf.iter().position(|b| *b == 0) {
        Some(end) => {
            buf.truncate(end);
            Ok(buf)
        }
        None => Err("unterminated string in the ELF file".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_binary_has_an_elf_interpreter() {
        let exe = std::env::current_exe().unwrap();
        let mut deps = ProgramDeps::default();
        inspect_program(&exe, 0, &mut deps).unwrap();
        assert_eq!(deps.executables[0], exe);
        // Dynamically linked against glibc (or static: then only the program).
        if let Some(interp) = deps.executables.get(1) {
            assert!(interp.is_absolute(), "{interp:?}");
            assert!(interp.exists(), "{interp:?}");
        }
    }

    #[test]
    fn scripts_resolve_to_their_interpreter() {
        let dir = std::env::temp_dir().join(format!("osmos-sandbox-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("script");
        let interpreter = std::env::current_exe().unwrap();
        std::fs::write(&script, format!("#!{} -x\necho\n", interpreter.display())).unwrap();
        let mut deps = ProgramDeps::default();
        inspect_program(&script, 0, &mut deps).unwrap();
        assert_eq!(deps.executables[0], script);
        assert_eq!(deps.executables[1], interpreter);

        std::fs::write(&script, b"plain text").unwrap();
        let err = inspect_program(&script, 0, &mut ProgramDeps::default()).unwrap_err();
        assert!(err.to_string().contains("neither an ELF"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
