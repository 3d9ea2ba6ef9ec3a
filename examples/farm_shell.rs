//! Developer tool: builds a connection farm in a private namespace and runs a
//! shell command there (e.g. to profile a kill by hand).
//! cargo run --release --example farm_shell -- T B 'command'

use sockkill::testing::farm;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (t, b): (usize, usize) = (a[1].parse().expect("T"), a[2].parse().expect("B"));
    let cmd = a[3].clone();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        sockkill::netns::loopback_up().expect("lo");
        let mut g = vec![farm::Group::new("127.1.0.1", t)];
        if b > 0 {
            g.push(farm::Group::new("127.2.0.1", b));
        }
        let f = farm::Farm::build(&g).expect("farm");
        let st = std::process::Command::new("bash").args(["-c", &cmd]).status().expect("bash");
        drop(f);
        std::process::exit(st.code().unwrap_or(1));
    })
    .join()
    .expect("thread");
}
