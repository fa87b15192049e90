use std::os::fd::AsFd;
use cella_jail::*;
fn main() {
    let f = probe::probe().unwrap();
    println!("{}", f.summary());
    let sp = Spawner::start(SpawnerConfig { netns_pool: 2 }).unwrap();
    let cg = cgroup::Cgroups::detect("cella-smoke").unwrap();
    let c = cg.create("s1", &cgroup::Limits { memory_bytes: 256<<20, pids: 64, cpus: 1.0 }).unwrap();
    std::fs::create_dir_all("/tmp/cella-smoke-scratch").unwrap();
    let spec = proto::SandboxSpec { id: "s1".into(), hostname: "sbx".into(), uid: 200001, lowerdirs: vec!["/".into()],
        masks: vec!["/root".into(), "/home".into(), "/etc/shadow".into()], disk_bytes: 64<<20, cgroup_procs: c.procs_files(),
        exec_cgroup_dir: c.exec_parent(), scratch_dir: "/tmp/cella-smoke-scratch".into(), shm_bytes: 16<<20 };
    let t = std::time::Instant::now();
    let s = sp.spawn(&spec).unwrap();
    let mut buf = Vec::new();
    let ev: (proto::Event, _) = proto::recv(s.control.as_fd(), &mut buf).unwrap().unwrap();
    println!("{:?} in {:?}", ev.0, t.elapsed());
    let (r, w) = sys::pipe().unwrap();
    let (ir, iw) = sys::pipe().unwrap(); drop(iw);
    let exec = proto::ExecSpec { id: 1, argv: vec!["sh".into(), "-c".into(), "id; hostname; ls /; ls -la /home /root /tmp; tail -1 /etc/passwd; cat /etc/shadow; cat /proc/self/cgroup; ls /dev; echo $$; ps aux | head".into()],
        env: vec!["PATH=/usr/bin:/bin".into()], cwd: "/home/user".into(), rlimits: vec![], tty: false };
    let t = std::time::Instant::now();
    proto::send(s.control.as_fd(), &proto::Command::Exec(exec), &[ir.as_fd(), w.as_fd(), w.as_fd()]).unwrap();
    drop(w); drop(ir);
    loop {
        let (ev, _): (proto::Event, _) = proto::recv(s.control.as_fd(), &mut buf).unwrap().unwrap();
        println!("{:?} at {:?}", ev, t.elapsed());
        if matches!(ev, proto::Event::Exited{..} | proto::Event::SpawnFailed{..}) { break }
    }
    let mut out = String::new();
    use std::io::Read; std::fs::File::from(r).read_to_string(&mut out).unwrap();
    println!("{out}");
    sys::pidfd_send_signal(s.pidfd.as_fd(), libc::SIGKILL).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    c.remove().unwrap();
}
