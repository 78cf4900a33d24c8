fn main() {
    std::process::exit(stagecraft::run(std::env::args_os()));
}
