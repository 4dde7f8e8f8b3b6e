//! The EC2 inventory calls against moto's EC2 (the same server as the S3
//! peer), seeded with boto3: what the client parses is what boto3 (AWS's
//! own SDK) reads from the same answers.

#![allow(clippy::unwrap_used)]

use hypersdk_aws::ec2::Ec2;
use hypersdk_aws::sigv4::Credentials;
use hypersdk_testsupport::s3::{MotoS3, S3Peer, ACCESS_KEY, SECRET_KEY};

fn client(moto: &MotoS3) -> Ec2 {
    Ec2::new(
        &moto.endpoint(),
        "us-east-1",
        Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            session_token: None,
        },
    )
    .unwrap()
}

/// boto3 code run with an EC2 client `ec2` for moto.
fn boto3_ec2(moto: &MotoS3, code: &str) -> serde_json::Value {
    let out = moto.boto3(
        &format!(
            "import json\nec2 = boto3.client('ec2', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\n{code}"
        ),
        &[],
    );
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

const SEED: &str = r#"
image = ec2.describe_images(Owners=['amazon'])['Images'][0]['ImageId']
r = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType='t3.large',
    BlockDeviceMappings=[{'DeviceName': '/dev/sdb', 'Ebs': {'VolumeSize': 3}}],
    TagSpecifications=[{'ResourceType': 'instance', 'Tags': [{'Key': 'Name', 'Value': 'web-01'}, {'Key': 'wave', 'Value': '1'}]}])
i = r['Instances'][0]
v = ec2.create_volume(Size=2, AvailabilityZone=i['Placement']['AvailabilityZone'])
ec2.attach_volume(VolumeId=v['VolumeId'], InstanceId=i['InstanceId'], Device='/dev/sdc')
d = ec2.describe_instances(InstanceIds=[i['InstanceId']])['Reservations'][0]['Instances'][0]
vols = [m['Ebs']['VolumeId'] for m in d['BlockDeviceMappings']]
sizes = {v['VolumeId']: v['Size'] for v in ec2.describe_volumes(VolumeIds=vols)['Volumes']}
t = ec2.describe_instance_types(InstanceTypes=['t3.large'])['InstanceTypes'][0]
print(json.dumps({'id': i['InstanceId'], 'type': d['InstanceType'], 'state': d['State']['Name'],
    'devices': [[m['DeviceName'], m['Ebs']['VolumeId']] for m in d['BlockDeviceMappings']],
    'sizes': sizes, 'macs': [n['MacAddress'] for n in d['NetworkInterfaces']],
    'vcpus': t['VCpuInfo']['DefaultVCpus'], 'mib': t['MemoryInfo']['SizeInMiB'],
    'arch': d.get('Architecture'), 'root': d.get('RootDeviceName')}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_volumes_and_types_read_as_boto3_reads_them() {
    let moto = MotoS3::start();
    let seeded = boto3_ec2(&moto, SEED);
    let ec2 = client(&moto);
    let all = ec2.instances(&[]).await.unwrap();
    let id = seeded["id"].as_str().unwrap();
    let i = all
        .iter()
        .find(|i| i.id == id)
        .expect("the seeded instance is listed");
    assert_eq!(i.name.as_deref(), Some("web-01"));
    assert!(i.tags.contains(&("wave".into(), "1".into())));
    assert_eq!(i.instance_type, seeded["type"].as_str().unwrap());
    assert_eq!(i.state, seeded["state"].as_str().unwrap());
    assert_eq!(i.architecture.as_deref(), seeded["arch"].as_str());
    assert_eq!(i.root_device.as_deref(), seeded["root"].as_str());
    let devices: Vec<(String, String)> = seeded["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d[0].as_str().unwrap().into(), d[1].as_str().unwrap().into()))
        .collect();
    assert_eq!(i.volumes, devices);
    assert!(
        i.volumes.len() >= 2,
        "two volumes at least: {:?}",
        i.volumes
    );
    let macs: Vec<Option<String>> = seeded["macs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().map(str::to_string))
        .collect();
    assert_eq!(
        i.nics.iter().map(|n| n.mac.clone()).collect::<Vec<_>>(),
        macs
    );
    // One instance by id; the others are not fetched.
    let one = ec2.instances(&[id]).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(&one[0], i);

    let ids: Vec<&str> = i.volumes.iter().map(|(_, v)| v.as_str()).collect();
    let vols = ec2.volumes(&ids).await.unwrap();
    for v in &vols {
        assert_eq!(Some(v.size_gib), seeded["sizes"][&v.id].as_u64(), "{v:?}");
    }
    assert_eq!(vols.len(), ids.len());
    let t = ec2.instance_type("t3.large").await.unwrap();
    assert_eq!(u64::from(t.vcpus), seeded["vcpus"].as_u64().unwrap());
    assert_eq!(t.memory_mib, seeded["mib"].as_u64().unwrap());

    // A missing instance and an unknown type: errors naming them.
    let e = ec2.instances(&["i-0000000000000dead"]).await.unwrap_err();
    assert!(e.to_string().contains("InvalidInstanceID"), "{e}");
    assert!(!format!("{ec2:?}").contains(SECRET_KEY));
}
