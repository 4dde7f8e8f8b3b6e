import hypersdk

vms = hypersdk.local("examples/vms")
report = vms.export("demo-vm", "out-py", verify=True, overwrite=True)
print(report.location, report.size, "verified" if report.verified else "NOT verified")
