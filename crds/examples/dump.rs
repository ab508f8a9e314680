fn main() {
    print!("{}", policybind_crds::all_crds_yaml());
}
