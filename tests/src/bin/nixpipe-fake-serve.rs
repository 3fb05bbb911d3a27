//! A hostile serve peer for tests: what `nix-store --serve` says to a
//! reader, serving one path whose NAR is whatever file it is given, with
//! that file's real size and hash, so that only what the NAR holds can be
//! wrong:
//!
//!     nixpipe-fake-serve NAR-FILE STORE-PATH
//!
//! It answers the handshake, QueryValidPaths (every path asked is valid),
//! QueryClosure (the path alone), QueryPathInfos and DumpStorePath, on
//! stdin and stdout, as Nix's serve protocol 2.5 does.

use sha2::{Digest, Sha256};
use std::io::{self, BufReader, BufWriter, Read, Write};

const SERVER_MAGIC: u64 = 0x5452_eecb;
const VERSION: u64 = 0x205;

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [nar_file, path] = &args[..] else {
        eprintln!("usage: nixpipe-fake-serve NAR-FILE STORE-PATH");
        std::process::exit(2);
    };
    let nar = std::fs::read(nar_file)?;
    let hash: String = Sha256::digest(&nar).iter().map(|b| format!("{b:02x}")).collect();
    let (mut input, mut output) = (BufReader::new(io::stdin()), BufWriter::new(io::stdout()));
    read_u64(&mut input)?;
    read_u64(&mut input)?;
    write_u64(&mut output, SERVER_MAGIC)?;
    write_u64(&mut output, VERSION)?;
    output.flush()?;
    loop {
        let Ok(command) = read_u64(&mut input) else { return Ok(()) };
        match command {
            // QueryValidPaths: lock, substitute, paths; all valid.
            1 => {
                read_u64(&mut input)?;
                read_u64(&mut input)?;
                let paths = read_strings(&mut input)?;
                write_strings(&mut output, &paths)?;
            }
            // QueryPathInfos: each path's info, then an empty string.
            2 => {
                for asked in read_strings(&mut input)? {
                    write_string(&mut output, &asked)?;
                    write_string(&mut output, "")?; // deriver
                    write_strings(&mut output, &[])?; // references
                    write_u64(&mut output, nar.len() as u64)?; // download size
                    write_u64(&mut output, nar.len() as u64)?;
                    write_string(&mut output, &format!("sha256:{hash}"))?;
                    write_string(&mut output, "")?; // ca
                    write_strings(&mut output, &[])?; // sigs
                }
                write_string(&mut output, "")?;
            }
            // DumpStorePath: the NAR.
            3 => {
                read_string(&mut input)?;
                output.write_all(&nar)?;
            }
            // QueryClosure: include outputs, paths; the path alone.
            7 => {
                read_u64(&mut input)?;
                read_strings(&mut input)?;
                write_strings(&mut output, std::slice::from_ref(path))?;
            }
            other => {
                eprintln!("nixpipe-fake-serve: no command {other}");
                std::process::exit(1);
            }
        }
        output.flush()?;
    }
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut buf = [0; 8];
    r.read_exact(&mut buf)?;
    Ok(u64::from_le_bytes(buf))
}

fn read_string(r: &mut impl Read) -> io::Result<String> {
    let len = read_u64(r)? as usize;
    let mut buf = vec![0; len + (8 - len % 8) % 8];
    r.read_exact(&mut buf)?;
    buf.truncate(len);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn read_strings(r: &mut impl Read) -> io::Result<Vec<String>> {
    (0..read_u64(r)?).map(|_| read_string(r)).collect()
}

fn write_u64(w: &mut impl Write, n: u64) -> io::Result<()> {
    w.write_all(&n.to_le_bytes())
}

fn write_string(w: &mut impl Write, s: &str) -> io::Result<()> {
    write_u64(w, s.len() as u64)?;
    w.write_all(s.as_bytes())?;
    w.write_all(&[0; 8][..(8 - s.len() % 8) % 8])
}

fn write_strings(w: &mut impl Write, items: &[String]) -> io::Result<()> {
    write_u64(w, items.len() as u64)?;
    items.iter().try_for_each(|s| write_string(w, s))
}
