
Û
†

service.name

checkout

k8s.namespace.name
shop
%
k8s.pod.name
checkout-7d9f-abcde
5
k8s.pod.uid&
$0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0

k8s.container.name
app

container.id
3f4e5d6c7b8a

k8s.node.name
node-1

	host.arch
amd64Ï

	wake.seed1.0

lib
xc
îá›~ÃÁ±tk=v"îá›~ÃÁ±s*bad09ººÙ÷ŠêAğ÷ŠêJ
http.method
GETzboome
[ÿ÷˜Òi¶3?Æîá›~ÃÁ±tk=v"*
bad parent09ººÙ÷ŠêAğ÷ŠêJ
http.method
GETzboomc
[ÿ÷˜Òi¶3?Æîá›~ÃÁ±tk=v"îá›~ÃÁ±s*ok09ººÙ÷ŠêAğ÷ŠêJ
http.method
GETzboom